"""lightswe: train software-engineering agents with reinforcement learning.

Importing the package registers the Gymnasium ids (``lightswe/SWE-v0`` ...): Gymnasium 1.x removed
entry-point plug-ins, so registration happens on import, as ``import ale_py`` does for Atari. Registration
names the entry point as a string, so nothing heavy (Docker, torch) is imported here.
"""

from lightswe.envs import registration as _registration  # noqa: F401

__version__ = "0.1.0"
