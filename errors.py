"""One exception family for lightswe: a base, an infrastructure branch, a user-input branch and an action branch.

Why the branches: a policy is trained on what the environment pays, so a failure of the machine (engine,
container, image build, source download, model server) must never be scored as a failure of the policy. The
agent loop catches :class:`InfrastructureError` once and records the episode as ``sandbox_error`` with
reward ``None``; :class:`UserInputError` is what the CLI prints as one line (what was wrong, the fix), without
a traceback. :class:`ActionError` is the policy's own mistake inside an episode (a malformed tool call, a bad
tool argument): the environment turns its message into the observation, so it never ends an episode and never
reaches the loop. Messages follow Gymnasium's ``error.py``: what was expected, what came, and the fix.

Example::

    from lightswe.errors import InfrastructureError, LightSWEError, UserInputError

    try:
        env.reset()
    except InfrastructureError as err:   # engine down, image missing, container died: not the policy's fault
        ...
"""

from __future__ import annotations


class LightSWEError(Exception):
    """Base of every error lightswe raises on purpose."""


class InfrastructureError(LightSWEError, RuntimeError):
    """The machine failed (engine, container, image, source, server): never a policy failure."""


class NonFiniteError(InfrastructureError):
    """The model's numbers broke down: NaN or +inf logits, a row with no finite logit (all -inf), or a NaN/inf
    log-prob or probability, from the built-in samplers (``lightswe.model.generation.sample``, the CUDA
    ``SamplerEngine``, the ``hf:`` models), a model server's answer, or the learner's log-probs. The cause is the
    machine's or the weights' (a diverged or damaged checkpoint, an overflow in bf16/fp16), never the policy's
    choice: the agent loop records the episode as ``sandbox_error`` with reward ``None`` (never 0.0, never a token
    picked from garbage), and the learner refuses the update before the optimiser touches the weights."""


class UserInputError(LightSWEError, ValueError):
    """Bad input from the user (a config value, a task file, a CLI option); the message names the fix."""


class ActionError(LightSWEError, ValueError):
    """The policy's action cannot be carried out (malformed tool call, bad argument); the message is the observation."""


def need(ok: bool, option: str, value: object, rule: str, fix: str) -> None:
    """Raise ``UserInputError("OPTION VALUE: RULE; fix: FIX")`` unless ``ok``: the one shape of a validation message.

    Used by every config's ``__post_init__`` (``lightswe train``'s, ``rollout``/``eval``'s, the model's), so a bad
    value always names the setting, what came (its ``repr``), the rule it broke and the fix, on one line.

    Example::

        need(steps >= 1, "--steps", steps, "must be >= 1", "e.g. --steps 10")
        # UserInputError: --steps 0: must be >= 1; fix: e.g. --steps 10

    Raises:
        UserInputError: when ``ok`` is false.
    """
    if not ok:
        raise UserInputError(f"{option} {value!r}: {rule}; fix: {fix}")
