"""Policy backends behind one interface: ``generate(token_ids, sampling) -> (tokens, logprobs)``.

``make_policy(spec)`` builds one from a command-line spec; see ``lightswe.agent.policies.spec``.
"""

from lightswe.agent.policies.base import Policy, Sample, SamplingParams, check_sample, generate_batch

__all__ = ["Policy", "Sample", "SamplingParams", "check_sample", "generate_batch"]
