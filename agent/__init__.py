"""lightswe.agent"""
