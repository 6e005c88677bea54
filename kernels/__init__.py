"""lightswe.kernels"""
