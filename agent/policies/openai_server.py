"""Any OpenAI-compatible completions server as a policy (vLLM ``serve`` and friends), in token space.

Token ids go in as the ``prompt`` (a list of ints) and come back through vLLM's
``return_tokens_as_token_ids`` (each logprob token reads ``"token_id:<id>"``), so nothing is re-tokenised.
The stop token is part of the returned tokens when the server reports it (vLLM does for ``stop_token_ids``);
otherwise the chat glue closes the turn with mask 0.

Example::

    policy = OpenAIPolicy("http://localhost:8000/v1", model="MiniMaxAI/MiniMax-M1-40k")
    tokens, logprobs = policy.generate(prompt_ids, SamplingParams(max_new_tokens=512, stop_token_ids=[2]))
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from lightswe.agent.policies.base import Sample, SamplingParams, check_sample
from lightswe.errors import InfrastructureError


class ServerError(InfrastructureError):
    """The server answered with an error or a response without token ids / log-probs."""


class OpenAIPolicy:
    def __init__(self, base_url: str, *, model: str = "default", api_key: str | None = None,
                 timeout_s: float = 600.0, retries: int = 2) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model, self.api_key, self.timeout_s, self.retries = model, api_key, timeout_s, retries
        self.name = f"openai:{self.base_url}#{model}"

    def check_reachable(self, timeout_s: float = 10.0) -> None:
        """Fail at once, before any episode, when no server answers at ``base_url`` (any HTTP answer counts, an
        error status included: only a connection that cannot be made or times out fails).

        Raises:
            ServerError: naming the URL, what happened and the fix (an :class:`InfrastructureError`).
        """
        request = urllib.request.Request(self.base_url + "/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServerError(f"no OpenAI-compatible server answers at {self.base_url} ({reason}); fix: start it "
                              "(e.g. python -m vllm.entrypoints.openai.api_server --model DIR --logprobs-mode "
                              "processed_logprobs) or correct the URL in --policy openai:URL") from None

    def request_body(self, token_ids: Sequence[int], sampling: SamplingParams) -> dict:
        body = {"model": self.model, "prompt": [int(t) for t in token_ids], "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "logprobs": 1,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False,
                "stop_token_ids": list(sampling.stop_token_ids)}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), headers=headers)
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:  # a 4xx is our fault: do not retry
                detail = err.read().decode(errors="replace")[:500]
                if err.code < 500 or attempt == self.retries:
                    raise ServerError(f"{self.base_url}{path}: HTTP {err.code}: {detail}; fix: a 4xx is the request "
                                      "(model name, token ids past the vocabulary, max_tokens past the context), "
                                      "a 5xx the server (see its log)") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if attempt == self.retries:
                    raise ServerError(f"{self.base_url}{path} unreachable ({err}); is the server running?") from None
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample:
        response = self._post("/completions", self.request_body(token_ids, sampling))
        return check_sample(parse_completion(response), sampling)


def parse_completion(response: dict) -> Sample:
    """(token ids, log-probs) from a completions response with ``return_tokens_as_token_ids``."""
    try:
        logprobs = response["choices"][0]["logprobs"]
        tokens, values = logprobs["tokens"], logprobs["token_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ServerError("the response has no choices[0].logprobs.tokens/token_logprobs; the server must "
                          f"support `logprobs` (got {json.dumps(response)[:300]})") from None
    ids = []
    for token in tokens:
        if not (isinstance(token, str) and token.startswith("token_id:")):
            raise ServerError(f"token {token!r} is not 'token_id:<id>'; the server must support "
                              "return_tokens_as_token_ids (vLLM >= 0.6)")
        ids.append(int(token.split(":", 1)[1]))
    return ids, [float(v) for v in values]
