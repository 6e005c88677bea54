"""Every Gymnasium id lightswe provides, in one visible place (as gymnasium/envs/__init__.py does).

Ids are versioned: a change that alters observations, rewards or dynamics gets a new ``-vN``.
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = ("lightswe/SWE-v0",)

if "lightswe/SWE-v0" not in registry:
    register(
        id="lightswe/SWE-v0",
        entry_point="lightswe.envs.swe_env:SWEEnv",
        max_episode_steps=50,  # truncation through gymnasium's TimeLimit wrapper
        disable_env_checker=False,
    )
