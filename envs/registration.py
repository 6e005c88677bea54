"""Every Gymnasium id lightswe provides, in one visible place (as gymnasium/envs/__init__.py does).

Ids are versioned: a change that alters observations, rewards or dynamics gets a new ``-vN``.

Vectorised use needs nothing extra: ``gym.make_vec(id, num_envs=N, vectorization_mode="sync" | "async")`` and
``gym.vector.AsyncVectorEnv`` work with their defaults (shared memory included: the spaces are
:class:`~lightswe.envs.spaces.UnicodeText`); each env owns one sandbox. ``render_mode="ansi"`` is the one render
mode (see ``SWEEnv.metadata``). Keyword arguments of ``gym.make`` go to :class:`~lightswe.envs.swe_env.SWEEnv`
(``tasks`` takes a JSONL path or a shipped set name: ``demo``, ``pool:train``, ``pool:test``).
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
