"""A small OpenAI-compatible completions server for tests: any lightswe Policy behind ``/v1/completions``.

It answers the way vLLM ``serve`` does for token-id prompts with ``logprobs`` and
``return_tokens_as_token_ids``: ``choices[0].logprobs.tokens`` are ``"token_id:<id>"`` strings.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lightswe.agent.policies.base import SamplingParams


class CompletionsServer:
    def __init__(self, policy, *, decode=None) -> None:
        self.policy, self.decode, self.requests = policy, decode, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if self.path != "/v1/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                prompt = body.get("prompt")
                if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
                    return self._send(400, {"error": {"message": "prompt must be a list of token ids"}})
                sampling = SamplingParams(max_new_tokens=body["max_tokens"], temperature=body["temperature"],
                                          top_p=body.get("top_p", 1.0), seed=body.get("seed"),
                                          stop_token_ids=body.get("stop_token_ids", []))
                tokens, logprobs = server.policy.generate(prompt, sampling)
                as_ids = body.get("return_tokens_as_token_ids")
                finish = "stop" if tokens and tokens[-1] in sampling.stop_token_ids else "length"
                self._send(200, {"id": "cmpl-test", "object": "text_completion", "model": body["model"], "choices": [{
                    "index": 0, "text": server.decode(tokens) if server.decode else "", "finish_reason": finish,
                    "logprobs": {"tokens": [f"token_id:{t}" if as_ids else str(t) for t in tokens],
                                 "token_logprobs": logprobs, "top_logprobs": None, "text_offset": []}}]})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CompletionsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
