"""lightswe.tasks"""
