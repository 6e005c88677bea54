"""lightswe.model"""
