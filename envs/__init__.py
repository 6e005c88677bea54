"""lightswe.envs"""
