"""A real OpenAI-compatible completions server process that misbehaves on request, for the infrastructure tests.

Run as ``python tests/agent/faulty_server.py``: it prints its port on the first line of stdout, then serves
until killed. The request's ``model`` field names the fault (``model="status:503"``...); ``FAULT#N`` applies the
fault to the first N requests of that model name only, then answers normally (a server that recovers;
``FAULT#N words`` counts apart from ``FAULT#N``). A
normal answer is what vLLM ``serve`` returns for a token-id prompt with ``logprobs`` and
``return_tokens_as_token_ids``: the tokens of ``"hi"`` then the first stop token, log-prob -1.0 each.

Faults: ``status:CODE`` (JSON error body; ``status:429`` adds ``Retry-After: 1``, ``status:503`` a
malformed ``Retry-After: nan``), ``reset`` (the connection
closed before any answer), ``cut`` (headers and half the body, then closed), ``hang`` (never answers),
``trickle`` (a valid body one byte every 0.2 s: never ends in practice), the slow-loris answers that never end
at all, one byte every 0.2 s: ``trickle-status`` (the status line), ``trickle-head`` (a header line),
``trickle-chunked`` (a chunked body of one-byte chunks), ``trickle-chunksize`` (a chunk-size line that never
ends), ``trickle-error`` (a 503 whose error body trickles), ``malformed`` (200 with text that is
not JSON), ``empty`` (``choices: []``), ``nologprobs`` (``logprobs: null``), ``nulllp`` (a ``null`` log-prob),
``nan`` / ``inf`` / ``-inf`` / ``positive`` (such a log-prob), ``short`` (fewer log-probs than tokens),
``badtoken`` (``"token_id:x"``), ``negtoken`` (``"token_id:-5"``), ``notokens`` (no token at all), ``abort`` (vLLM's
``finish_reason: abort``: the engine dropped the request), ``context`` (vLLM's 400 for a request past
``max_model_len``: ``MAX_MODEL_LEN`` below, also reported by ``/v1/models`` unless the server was started with
``--hide-max-model-len``; ``--max-model-len N`` sets it), ``notjsonobj``
(``[1, 2]``). ``POST /tokenize`` answers with the byte tokenizer's ids (``--other-tokenizer``: shifted by one;
``--no-tokenize``: 404).

``--tls CERT KEY`` serves HTTPS (PEM certificate chain and key, e.g. from ``trustme``), every fault as over HTTP,
the TLS handshake run in the request's own thread. ``--trickle-handshake`` serves no HTTP at all: it accepts each
connection and answers the client's TLS hello with a handshake record that never ends, one byte every 0.2 s (a
slow-loris server at the TLS layer).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_MODEL_LEN = 4096
SEEN: Counter = Counter()
LOCK = threading.Lock()


def completion(body: dict, logprobs: list, tokens: list[str] | None = None) -> dict:
    stop = (body.get("stop_token_ids") or [0])[0]
    tokens = tokens if tokens is not None else ["token_id:104", "token_id:105", f"token_id:{stop}"]
    return {"id": "cmpl-faulty", "object": "text_completion", "model": body.get("model"), "choices": [{
        "index": 0, "text": "hi", "finish_reason": "stop",
        "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": []}}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # --tls: the handshake here, not in the accepting thread
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            card = {"id": "default", "object": "model"}
            if "--hide-max-model-len" not in sys.argv:
                card["max_model_len"] = MAX_MODEL_LEN
            return self._send(200, {"object": "list", "data": [card]})
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":  # vLLM's, at the server root: the byte tokenizer's ids (+1 if told to differ)
            if "--no-tokenize" in sys.argv:
                return self._send(404, {"detail": "Not Found"})
            shift = 1 if "--other-tokenizer" in sys.argv else 0  # ids of the built-in ByteTokenizer: UTF-8 bytes
            tokens = [t + shift for t in body["prompt"].encode("utf-8")]  # (no lightswe import: answers at once)
            return self._send(200, {"tokens": tokens, "count": len(tokens), "max_model_len": MAX_MODEL_LEN})
        name = str(body.get("model", ""))
        fault, _, times = name.partition("#")
        with LOCK:
            SEEN[name] += 1
            count = SEEN[name]
        if times and count > int(times.split()[0]):  # "FAULT#N any words": its own counter
            fault = "ok"
        if fault == "context" and len(body["prompt"]) + body["max_tokens"] <= MAX_MODEL_LEN:
            fault = "ok"
        if fault.startswith("status:"):
            code = int(fault.split(":")[1])
            headers = {"Retry-After": "1"} if code == 429 else {"Retry-After": "nan"} if code == 503 else {}
            return self._send(code, {"error": {"message": f"injected {code}", "code": code}}, headers)
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "hang":
            time.sleep(3600)
            return
        if fault == "context":
            prompt, asked = len(body["prompt"]), body["max_tokens"]
            return self._send(400, {"object": "error", "type": "BadRequestError", "code": 400, "message": (
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                f"{prompt + asked} tokens ({prompt} in the messages, {asked} in the completion). Please reduce the "
                "length of the messages or completion.")})
        payloads = {
            "ok": completion(body, [-1.0, -1.0, -1.0]),
            "empty": {"id": "cmpl-faulty", "object": "text_completion", "choices": []},
            "nologprobs": {"choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": "stop"}]},
            "nulllp": completion(body, [-1.0, None, -1.0]),
            "nan": completion(body, [-1.0, float("nan"), -1.0]),
            "inf": completion(body, [-1.0, float("inf"), -1.0]),
            "-inf": completion(body, [-1.0, float("-inf"), -1.0]),
            "positive": completion(body, [-1.0, 0.5, -1.0]),
            "short": completion(body, [-1.0, -1.0]),
            "badtoken": completion(body, [-1.0, -1.0, -1.0], ["token_id:104", "token_id:x", "token_id:105"]),
            "negtoken": completion(body, [-1.0, -1.0, -1.0], ["token_id:104", "token_id:-5", "token_id:105"]),
            "notjsonobj": [1, 2],
            "notokens": completion(body, [], []),
            "abort": {**completion(body, [-1.0], ["token_id:104"]), "choices": [{
                **completion(body, [-1.0], ["token_id:104"])["choices"][0], "finish_reason": "abort"}]},
        }
        if fault in payloads:
            return self._send(200, payloads[fault])
        data = json.dumps(completion(body, [-1.0, -1.0, -1.0])).encode()
        if fault == "malformed":
            return self._raw(200, b'{"choices": [{"index": 0, "text": "hi", "logprobs": {"tok')
        if fault == "cut":
            self._head(200, len(data))
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.startswith("trickle-"):
            return self._slow_loris(fault.removeprefix("trickle-"))
        if fault == "trickle":
            self._head(200, len(data))
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(0.2)
            return
        self._send(500, {"error": {"message": f"unknown fault {fault!r}"}})

    def _slow_loris(self, part: str) -> None:
        """One byte every 0.2 s, forever (until the client gives up), in the answer's ``part``."""
        self.close_connection = True
        if part == "status":
            start, drip = b"HTTP/1.1 200", b" "  # the status line never ends
        elif part == "head":
            start, drip = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ", b"a"
        elif part == "chunked":
            start = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            drip = b"1\r\n \r\n"  # a one-byte chunk of whitespace, each a complete chunk
        elif part == "chunksize":
            start = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1"
            drip = b"0"  # the chunk's size, one hex digit at a time: the reader waits for its line end
        elif part == "error":
            start = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
            drip = b" "
        else:
            return self._send(500, {"error": {"message": f"unknown slow-loris part {part!r}"}})
        try:
            self.wfile.write(start)
            self.wfile.flush()
            while True:
                time.sleep(0.2)
                self.wfile.write(drip)
                self.wfile.flush()
        except OSError:  # the client hung up: what it should do
            return

    def _head(self, code: int, length: int, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _raw(self, code: int, data: bytes, headers: dict | None = None) -> None:
        self._head(code, len(data), headers)
        self.wfile.write(data)

    def _send(self, code: int, payload, headers: dict | None = None) -> None:
        self._raw(code, json.dumps(payload).encode(), headers)


def trickle_handshake(conn: socket.socket) -> None:
    """Read the client's hello, then a TLS handshake record of 16 KiB, one byte every 0.2 s, until it hangs up."""
    try:
        conn.recv(65536)
        conn.sendall(b"\x16\x03\x03\x40\x00")  # record header: handshake, TLS 1.2, 16384 bytes to come
        while True:
            time.sleep(0.2)
            conn.sendall(b"\x02")
    except OSError:  # the client hung up: what it should do
        return
    finally:
        conn.close()


def main() -> None:
    global MAX_MODEL_LEN
    if "--max-model-len" in sys.argv:
        MAX_MODEL_LEN = int(sys.argv[sys.argv.index("--max-model-len") + 1])
    if "--trickle-handshake" in sys.argv:
        listener = socket.create_server(("127.0.0.1", 0))
        print(listener.getsockname()[1], flush=True)
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=trickle_handshake, args=(conn,), daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.handle_error = lambda request, address: None  # a client that gave up (timeouts) is expected
    if "--tls" in sys.argv:
        cert, key = sys.argv[sys.argv.index("--tls") + 1:sys.argv.index("--tls") + 3]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
