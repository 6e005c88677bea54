"""Any OpenAI-compatible completions server as a policy (vLLM ``serve`` and friends), in token space.

Token ids go in as the ``prompt`` (a list of ints) and come back through vLLM's
``return_tokens_as_token_ids`` (each logprob token reads ``"token_id:<id>"``), so nothing is re-tokenised.
The stop token is part of the returned tokens when the server reports it (vLLM does for ``stop_token_ids``);
otherwise the chat glue closes the turn with mask 0.

Failures (tests/agent/test_model_server_faults.py, against a real misbehaving server process): HTTP 408/429/5xx,
a connection refused, reset or closed mid-body, a body that is not JSON and a response that does not end within
``timeout_s`` (one total deadline per request: connect, headers and body, so a slow-loris server trickling its
status line, headers, chunks or body a byte at a time is cut at ``timeout_s``, not per read; :class:`Deadline`)
are retried ``retries`` times (backoff 0.5 s, 1 s, ...; a ``Retry-After`` header is honoured up to
``timeout_s``), then raise :class:`ServerError` (the episode is ``sandbox_error``, reward None). Another 4xx is the
request's fault and is not retried, except vLLM's "maximum context length" 400, which is
:class:`~lightswe.agent.policies.base.ContextWindowExceeded` (the loop decides whose doing it was). The server's
``max_model_len`` (``/v1/models``, as vLLM reports it) caps each request's ``max_tokens`` so that a long episode
ends as ``context_limit`` instead of a 400. A response without token ids / log-probs, or with a malformed, NaN,
infinite or positive log-prob, is a :class:`ServerError` too (never stored, never trained on); a NaN or infinite
one is :class:`NonFiniteAnswer`, also a :class:`~lightswe.errors.NonFiniteError` (the kind's one class).

Example::

    policy = OpenAIPolicy("http://localhost:8000/v1", model="MiniMaxAI/MiniMax-M1-40k")
    tokens, logprobs = policy.generate(prompt_ids, SamplingParams(max_new_tokens=512, stop_token_ids=[2]))
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import io
import json
import math
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from lightswe.agent.policies.base import (ContextWindowExceeded, NonFiniteSample, Sample, SamplingParams,
                                          check_sample)
from lightswe.errors import InfrastructureError, NonFiniteError, UserInputError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # transient: the request may succeed when repeated
# A request past the window: vLLM ("maximum context length is N tokens", "longer than the maximum model length"),
# SGLang ("longer than the model's context length"), llama.cpp ("exceeds the available context size")
_CONTEXT = re.compile(r"maximum context length|maximum model length|context length|context size|max_model_len",
                      re.IGNORECASE)
_TOKEN = re.compile(r"token_id:(\d+)")


class Deadline:
    """One request's total deadline, ``seconds`` from now: connect, TLS handshake, send, status line, headers and
    body.

    A socket timeout bounds each read only, so a server that sends one byte per read (a slow-loris answer, or a
    TLS handshake trickled a byte at a time) would hold the request forever; here a watchdog timer shuts down
    every connection the request opened when the deadline passes, whatever phase it is in, which ends the blocked
    read at once; ``expired`` then says why it ended. It watches a duplicate of each connection's descriptor,
    taken as soon as the TCP connection exists: ``shutdown(2)`` acts on the connection, not the descriptor, so
    this reaches the TLS socket that ``ssl`` wraps around it (wrapping detaches the plain socket, so a shutdown
    through that object would fail) and the response that reads on after urllib drops its connection. Connect
    gets what is left of the deadline as its timeout. A context manager: the watchdog runs inside it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds, self.at = seconds, time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def left(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def passed(self) -> bool:
        """The deadline has passed: the watchdog fired, or a socket timeout set to what was left ran out first."""
        return self.expired or time.monotonic() >= self.at

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock``'s connection down at the deadline (at once if it has passed), also once ``ssl`` has wrapped
        it: a duplicate of its descriptor is kept until the deadline's context ends."""
        dup = sock.dup()
        with self._lock:
            self._sockets.append(dup)
            if not self.expired:
                return
        _shutdown(dup)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def error(self) -> TimeoutError:
        return TimeoutError(f"the response did not end within {self.seconds:g} s (one deadline for connect, "
                            "headers and body: a server trickling bytes is cut too)")

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the descriptor's: a TLS socket's reader sees EOF
    except OSError:  # closed already: the request ended in time after all
        pass


class _DeadlineConnection:
    """Mixin for ``http.client.HTTPConnection`` / ``HTTPSConnection``: connect within what is left of the
    :class:`Deadline`; its watchdog watches the TCP connection from the moment it exists (before an HTTPS
    connection's TLS handshake, which a server can trickle as well)."""

    def __init__(self, *args, deadline: Deadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        create = self._create_connection  # socket.create_connection: the TCP connect of connect()

        def create_watched(*args, **kwargs) -> socket.socket:
            sock = create(*args, **kwargs)
            deadline.watch(sock)
            return sock

        self._create_connection = create_watched

    def connect(self) -> None:
        left = self._deadline.left()
        if left <= 0:
            raise self._deadline.error()
        self.timeout = min(self.timeout, left) if isinstance(self.timeout, (int, float)) else left
        super().connect()


@functools.cache
def _deadline_class(base: type) -> type:
    return type(f"Deadline{base.__name__}", (_DeadlineConnection, base), {})


class _DeadlineHandlerMixin:
    """urllib's HTTP(S) handler whose connections keep a :class:`Deadline` (proxies etc. as urllib's own);
    ``kwargs`` go to urllib's handler (``context``: the HTTPS one's ``ssl.SSLContext``)."""

    def __init__(self, deadline: Deadline, **kwargs) -> None:
        super().__init__(**kwargs)
        self._deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(functools.partial(_deadline_class(http_class), deadline=self._deadline), req,
                               **kwargs)


class _DeadlineHTTPHandler(_DeadlineHandlerMixin, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPSHandler(_DeadlineHandlerMixin, urllib.request.HTTPSHandler):
    pass


def read_within(request: urllib.request.Request, timeout_s: float, *, per_read_s: float | None = None,
                context: ssl.SSLContext | None = None) -> bytes:
    """The whole response body of ``request`` within ``timeout_s`` seconds in all (a :class:`Deadline`: connect,
    TLS handshake, headers and body); each read also within ``per_read_s`` (default ``timeout_s``). ``context``:
    how an ``https://`` server's certificate is checked (default: urllib's, the system's CAs; ``SSL_CERT_FILE``
    is honoured), e.g. :func:`tls_context` with the CA of a self-signed server.

    Raises:
        urllib.error.HTTPError: a non-2xx answer, its body read within the same deadline (``err.read()``);
        TimeoutError: the deadline passed; urllib.error.URLError, http.client.HTTPException, OSError: the
        connection failed or was cut (``http.client.IncompleteRead``: closed before Content-Length bytes came).
    """
    with Deadline(timeout_s) as deadline:
        opener = urllib.request.build_opener(_DeadlineHTTPHandler(deadline),
                                             _DeadlineHTTPSHandler(deadline, context=context))
        try:
            with opener.open(request, timeout=per_read_s or timeout_s) as response:
                return _drain(response, deadline, check_length=True)
        except urllib.error.HTTPError as err:
            try:
                body = _drain(err, deadline, check_length=False) if err.fp is not None else b""
            except (OSError, http.client.HTTPException):
                body = b""
            if deadline.passed():
                raise deadline.error() from None
            raise urllib.error.HTTPError(err.url, err.code, err.reason, err.headers, io.BytesIO(body)) from None
        except (OSError, http.client.HTTPException):
            if deadline.passed():
                raise deadline.error() from None
            raise


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The ``ssl.SSLContext`` that trusts the CA certificate(s) in the PEM file ``ca_file`` besides the system's
    (the server's own certificate, when it is self-signed); None (urllib's default) without one.

    Raises:
        UserInputError: ``ca_file`` does not exist or holds no PEM certificate.
    """
    if not ca_file:
        return None
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as err:
        raise UserInputError(f"ca_file {ca_file!r}: cannot be read as PEM CA certificates ({err}); fix: the PEM file "
                             "of the CA that signed the server's certificate (its own, if self-signed)") from None
    return context


def _untrusted(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind a urllib error (its ``reason``), else None."""
    reason = getattr(err, "reason", err)
    return reason if isinstance(reason, ssl.SSLCertVerificationError) else None


def _drain(response, deadline: Deadline, *, check_length: bool) -> bytes:
    chunks = []
    while chunk := response.read1(1 << 16) if hasattr(response, "read1") else response.read(1 << 16):
        chunks.append(chunk)
        if deadline.left() <= 0:
            raise deadline.error()
    if deadline.expired:
        raise deadline.error()
    if check_length and response.length:  # Content-Length bytes still missing: the connection closed mid-body
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


class ServerError(InfrastructureError):
    """The server answered with an error or a response without token ids / log-probs."""


class NonFiniteAnswer(ServerError, NonFiniteError):
    """The server returned a NaN or infinite log-prob: its model's numbers broke down (non-finite logits), the kind
    every sampler reports as :class:`~lightswe.errors.NonFiniteError`."""


class OpenAIPolicy:
    """A policy served by an OpenAI-compatible completions server (vLLM) with token ids in and out.

    ``base_url``: the server (``/v1`` appended when missing); ``model``: the served model's name; ``api_key``: sent
    as a Bearer token when given; ``timeout_s``: seconds one request may take, the whole response included (a
    server trickling bytes is cut too); ``retries``: further attempts after a transient failure (module docstring).
    ``ca_file``: for an ``https://`` server whose certificate the system does not trust (self-signed), the PEM
    file of the CA that signed it (the certificate itself when self-signed; travels in the spec to Ray actors).
    ``generate`` returns (token ids, log-probs of the sampled tokens; ints and floats) and raises
    :class:`ServerError` (an ``InfrastructureError``: the episode is ``sandbox_error``) or
    :class:`~lightswe.agent.policies.base.ContextWindowExceeded`. As a spec:
    ``openai:URL?model=NAME&timeout_s=600&retries=2&ca_file=ca.pem``.

    Raises:
        UserInputError: ``ca_file`` cannot be read.
    """

    def __init__(self, base_url: str, *, model: str = "default", api_key: str | None = None,
                 timeout_s: float = 600.0, retries: int = 2, ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model, self.api_key, self.timeout_s, self.retries = model, api_key, timeout_s, retries
        self.ca_file, self._tls = ca_file, tls_context(ca_file)
        self.name = f"openai:{self.base_url}#{model}"
        self._max_model_len: int | None = None
        self._asked_window = False

    def check_reachable(self, timeout_s: float = 10.0) -> None:
        """Fail at once, before any episode, when no server answers at ``base_url`` (any HTTP answer counts, an
        error status included: only a connection that cannot be made or times out fails).

        Raises:
            ServerError: naming the URL, what happened and the fix (an :class:`InfrastructureError`);
            UserInputError: an ``https://`` server whose certificate this client does not trust (the fix: ``ca_file``).
        """
        request = urllib.request.Request(self.base_url + "/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            self._read(request, timeout_s)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if _untrusted(err):
                raise self._untrusted_error(_untrusted(err)) from None
            reason = getattr(err, "reason", err)
            raise ServerError(f"no OpenAI-compatible server answers at {self.base_url} ({reason}); fix: start it "
                              "(e.g. python -m vllm.entrypoints.openai.api_server --model DIR --logprobs-mode "
                              "processed_logprobs) or correct the URL in --policy openai:URL") from None

    def check_model(self, timeout_s: float = 10.0) -> None:
        """Refuse a ``model`` the server does not serve, before any episode: every request would get vLLM's 404
        ("The model `X` does not exist") and each episode would end as ``sandbox_error``. The names are those of
        ``/v1/models`` (vLLM lists each ``--served-model-name`` and LoRA adapter); a server that does not list its
        models is not checked.

        Raises:
            UserInputError: naming the model asked for, the served ones and the spec that fixes it.
        """
        request = urllib.request.Request(self.base_url + "/models", headers=self._headers())
        try:
            cards = json.loads(self._read(request, min(self.timeout_s, timeout_s))).get("data")
            served = [card["id"] for card in cards if isinstance(card.get("id"), str)]
        except (OSError, http.client.HTTPException, ValueError, AttributeError, TypeError, KeyError):
            return  # no model list: the first request says so if it matters
        if served and self.model not in served:
            asked = f"model {self.model!r}" if self.model != "default" else "no model (the spec has no ?model=)"
            raise UserInputError(f"--policy openai:{self.base_url}: asks for {asked}, but the server serves "
                                 f"{', '.join(map(repr, served))}; fix: --policy 'openai:{self.base_url}?model="
                                 f"{served[0]}' (the name is the server's --served-model-name, else its --model)")

    def check_tokenizer(self, tokenizer, timeout_s: float = 10.0) -> None:
        """Refuse a ``tokenizer`` that is not the served model's: the server's ``/tokenize`` (vLLM's, at the server
        root) and ``tokenizer`` must give the same ids for a probe text (code, accents, a symbol), else the ids the
        server returns mean other text here, and the env and the learner would see what the model did not write.
        A server without ``/tokenize`` is not checked.

        Raises:
            UserInputError: the two tokenisations differ, naming both and the fix.
        """
        probe = "def add(x, y):\n    return x + y  # naïve ✓\n"
        root = self.base_url[: -len("/v1")]
        body = {"model": self.model, "prompt": probe, "add_special_tokens": False}
        request = urllib.request.Request(root + "/tokenize", data=json.dumps(body).encode(), headers=self._headers())
        try:
            served = json.loads(self._read(request, min(self.timeout_s, timeout_s))).get("tokens")
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            return  # no /tokenize (not vLLM) or no answer: generate() says so if it matters
        encode = getattr(tokenizer, "encode_ordinary", None) or tokenizer.encode
        ours = list(encode(probe))
        if isinstance(served, list) and served != ours:
            raise UserInputError(f"the server at {root} tokenizes {probe!r} as {served[:12]}... but --tokenizer gives "
                                 f"{ours[:12]}...: its token ids would mean other text here; fix: pass the served "
                                 "model's tokenizer (--tokenizer PATH/tokenizer.json)")

    def check(self, tokenizer) -> None:
        """Every check before the first episode, in order: a server answers (:meth:`check_reachable`), it serves
        ``model`` (:meth:`check_model`), its token ids mean the text they mean to ``tokenizer``
        (:meth:`check_tokenizer`). Called by ``lightswe.agent.policies.spec.preflight``, wherever the policy runs.

        Raises:
            ServerError: no server answers; UserInputError: an untrusted certificate, a model it does not serve,
                another tokenizer.
        """
        self.check_reachable()
        self.check_model()
        self.check_tokenizer(tokenizer)

    def request_body(self, token_ids: Sequence[int], sampling: SamplingParams) -> dict:
        body = {"model": self.model, "prompt": [int(t) for t in token_ids], "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "logprobs": 1,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False,
                "stop_token_ids": list(sampling.stop_token_ids)}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def max_model_len(self) -> int | None:
        """The served model's context window in tokens, as ``/v1/models`` reports it (vLLM's ``max_model_len``);
        None when the server does not say (asked once)."""
        if not self._asked_window:
            self._asked_window = True
            request = urllib.request.Request(self.base_url + "/models", headers=self._headers())
            try:
                cards = json.loads(self._read(request, min(self.timeout_s, 30.0))).get("data") or []
                card = next((c for c in cards if c.get("id") == self.model), cards[0] if cards else {})
                value = card.get("max_model_len")
                self._max_model_len = value if isinstance(value, int) and value > 0 else None
            except (OSError, http.client.HTTPException, ValueError, AttributeError, TypeError):
                self._max_model_len = None
        return self._max_model_len

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _read(self, request: urllib.request.Request, timeout_s: float | None = None) -> bytes:
        """The whole response body within ``timeout_s`` (default the policy's) from the request: one deadline for
        connect, TLS handshake, headers and body (``read_within``), so a server trickling any part of its answer is
        cut too; an ``https://`` server's certificate checked against ``ca_file`` too."""
        return read_within(request, timeout_s or self.timeout_s, context=self._tls)

    def _untrusted_error(self, err: ssl.SSLCertVerificationError) -> UserInputError:
        where = (f"--policy 'openai:{self.base_url}?ca_file=CA.pem'" if self.ca_file is None
                 else f"ca_file={self.ca_file} must be the CA that signed it")
        return UserInputError(f"the server at {self.base_url} presents a certificate this client does not trust "
                              f"({err.verify_message or err}); fix: give the client the CA that signed it (the "
                              f"certificate itself if self-signed): {where}")

    def _post(self, path: str, body: dict) -> dict:
        """POST JSON, retrying transient failures (see the module docstring); the parsed JSON object.

        Raises:
            ServerError: the server failed (after the retries) or refused the request;
            ContextWindowExceeded: the request does not fit in the served model's context window.
        """
        where = f"{self.base_url}{path}"
        request = urllib.request.Request(where, data=json.dumps(body).encode(), headers=self._headers())
        for attempt in range(self.retries + 1):
            wait = 0.5 * 2**attempt
            try:
                payload = json.loads(self._read(request))
                if isinstance(payload, dict):
                    return payload
                problem = f"the response is JSON but not an object ({json.dumps(payload)[:200]})"
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:500]
                if err.code == 400 and _CONTEXT.search(detail):
                    raise ContextWindowExceeded(f"{where}: the request does not fit in the model's context window "
                                                f"(HTTP 400: {detail})") from None
                problem = f"HTTP {err.code}: {detail}"
                if err.code not in RETRY_STATUS:
                    raise ServerError(f"{where}: {problem}; fix: a 4xx is the request (model name, token ids "
                                      "past the vocabulary, max_tokens past the context)") from None
                wait = max(wait, _retry_after(err.headers, cap=self.timeout_s))
            except json.JSONDecodeError as err:
                problem = f"the response is not JSON ({err})"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                if _untrusted(err):  # no retry helps: the same certificate comes back
                    raise ServerError(str(self._untrusted_error(_untrusted(err)))) from None
                problem = f"unreachable or cut off ({getattr(err, 'reason', None) or err!r})"
            if attempt == self.retries:
                raise ServerError(f"{where}: {problem} after {self.retries + 1} attempt(s); fix: is the server "
                                  "running and healthy (see its log)?")
            time.sleep(wait)
        raise AssertionError("unreachable")

    def generate(self, token_ids: Sequence[int], sampling: SamplingParams) -> Sample:
        """Raises ServerError (an InfrastructureError) or ContextWindowExceeded; see the module docstring."""
        body = self.request_body(token_ids, sampling)
        window = self.max_model_len()
        if window is not None:
            room = window - len(body["prompt"])
            if room < 1:
                raise ContextWindowExceeded(f"the prompt ({len(body['prompt'])} tokens) leaves no room in the "
                                            f"served model's context window ({window} tokens, max_model_len)")
            body["max_tokens"] = min(body["max_tokens"], room)
        response = self._post("/completions", body)
        return check_sample(parse_completion(response), sampling)


def _retry_after(headers, *, cap: float) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date, RFC 9110 10.2.3), at most
    ``cap``; 0 without one."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), cap) if math.isfinite(seconds) else 0.0  # "nan" would reach time.sleep


def parse_completion(response: dict) -> Sample:
    """(token ids, log-probs) from a completions response with ``return_tokens_as_token_ids``.

    Raises:
        ServerError: no ``choices[0].logprobs.tokens/token_logprobs``, a token that is not ``token_id:<id>``, or a
        log-prob that is not a number (``check_sample`` then refuses NaN, infinite and positive ones).
    """
    try:
        choice = response["choices"][0]
        logprobs = choice["logprobs"]
        tokens, values = logprobs["tokens"], logprobs["token_logprobs"]
        if not (isinstance(tokens, list) and isinstance(values, list)):
            raise TypeError
    except (KeyError, IndexError, TypeError):
        raise ServerError("the response has no choices[0].logprobs.tokens/token_logprobs; the server must "
                          f"support `logprobs` (got {json.dumps(response)[:300]})") from None
    if choice.get("finish_reason") == "abort":  # vLLM: the engine dropped the request (preempted, shutting down)
        raise ServerError("the server aborted the request (finish_reason 'abort'); see its log")
    if not tokens:  # max_tokens >= 1 always samples a token: an empty answer is the server's failure, never a turn
        raise ServerError("the server returned no token for a request of max_tokens >= 1; see its log")
    ids = []
    for token in tokens:
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            raise ServerError(f"token {token!r} is not 'token_id:<id>'; the server must support "
                              "return_tokens_as_token_ids (vLLM >= 0.6)")
        ids.append(int(match.group(1)))
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ServerError(f"log-prob {value!r} is not a number; the server must return one log-prob per "
                              "sampled token (`logprobs: 1`)")
    try:
        return check_sample((ids, values), _UNBOUNDED)
    except NonFiniteSample as err:  # the server's answer, named as such; the kind stays NonFiniteError
        raise NonFiniteAnswer(f"the server's answer cannot be trained on: {err}") from None
    except ValueError as err:  # SampleError: the server's answer, named as such
        raise ServerError(f"the server's answer cannot be trained on: {err}") from None


_UNBOUNDED = SamplingParams(max_new_tokens=1 << 62)
