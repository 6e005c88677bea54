"""The model-server client over HTTPS, against the real faulty server (tests/agent/faulty_server.py) serving TLS
with a certificate of a throwaway CA (``trustme``): the client given that CA answers as over HTTP, every
slow-loris answer is cut at the one deadline, and so is a TLS handshake trickled a byte at a time; a client not
given the CA is refused in one line naming the fix, never retried as if the server were down.

Before the fixes: the policy had no way to trust a self-signed server's CA (only ``SSL_CERT_FILE``, which every
Ray node would need as well), and an untrusted certificate read as "no OpenAI-compatible server answers ...; fix:
start it" and was retried like a server that is down. The slow-loris answers were already cut over TLS (measured
1.51 s each at timeout_s=1.5 with the old client); the trickled handshake was bounded only by CPython's own
handshake timeout (the socket timeout, set to what was left of the deadline) and failed as "The handshake
operation timed out": the deadline's watchdog now watches the connection from before the handshake, so the one
deadline cuts it, whatever the ``ssl`` module does.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from lightswe.agent.policies.base import SamplingParams
from lightswe.agent.policies.openai_server import OpenAIPolicy, ServerError, read_within, tls_context
from lightswe.agent.policies.spec import check_spec, make_policy
from lightswe.errors import UserInputError

from .test_model_server_faults import SLOW_LORIS, Server

trustme = pytest.importorskip("trustme", reason="pip install 'lightswe[dev]' (trustme: test certificates)")

PROMPT = list(range(10))
SAMPLING = SamplingParams(max_new_tokens=64, stop_token_ids=[2])
OK = ([104, 105, 2], [-1.0, -1.0, -1.0])


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """(the CA's PEM file, the server's certificate chain, its key) for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    authority.cert_pem.write_to_path(str(paths[0]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return tuple(str(p) for p in paths)


@pytest.fixture(scope="module")
def https(ca):
    srv = Server("--tls", ca[1], ca[2], scheme="https")
    yield srv
    srv.close()


def test_the_client_given_the_ca_talks_to_an_https_server(https, ca):
    policy = https.policy("ok", ca_file=ca[0])
    policy.check_reachable()
    https.policy("default", ca_file=ca[0]).check_model()  # the served name passes
    assert policy.generate(PROMPT, SAMPLING) == OK
    assert policy.max_model_len() == 4096  # /v1/models read over TLS too
    spec = make_policy(f"openai:{https.url}?model=ok&ca_file={ca[0]}", tokenizer=None, tasks=[])  # as Ray actors do
    assert spec.generate(PROMPT, SAMPLING) == OK


def test_a_certificate_the_client_does_not_trust_is_refused_in_one_line_without_retries(https, ca, tmp_path):
    with pytest.raises(UserInputError, match=r"does not trust.*fix: give the client the CA.*\?ca_file=CA\.pem"):
        https.policy("ok").check_reachable()
    started = time.monotonic()
    with pytest.raises(ServerError, match="does not trust"):
        https.policy("ok", retries=3).generate(PROMPT, SAMPLING)
    assert time.monotonic() - started < 0.5  # no retry (the backoff alone is 0.5 s): the same certificate comes back
    other = trustme.CA()  # a CA, but not the one that signed the server's certificate
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    with pytest.raises(UserInputError, match=r"ca_file=.*other\.pem must be the CA that signed it"):
        https.policy("ok", ca_file=str(tmp_path / "other.pem")).check_reachable()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for bad in (tmp_path / "junk.pem", tmp_path / "missing.pem"):
        with pytest.raises(UserInputError, match=r"cannot be read as PEM CA certificates.*; fix:"):
            OpenAIPolicy(https.url, ca_file=str(bad))
    with pytest.raises(UserInputError, match=r"ca_file .*missing\.pem is not a file; fix:"):  # the spec, up front
        check_spec(f"openai:{https.url}?ca_file={tmp_path / 'missing.pem'}")


@pytest.mark.parametrize("fault", ["hang", "trickle", *SLOW_LORIS])
def test_a_response_that_never_ends_over_tls_is_cut_at_the_timeout(https, ca, fault):
    started = time.monotonic()
    with pytest.raises(ServerError, match="unreachable or cut off.*did not end within 1.5 s"):
        https.policy(fault, retries=0, timeout_s=1.5, ca_file=ca[0]).generate(PROMPT, SAMPLING)
    assert time.monotonic() - started < 3


def test_a_slow_loris_over_tls_is_retried_and_recovers(https, ca):
    started = time.monotonic()
    with pytest.raises(ServerError, match="after 2 attempt"):
        https.policy("trickle-chunked", timeout_s=1.0, ca_file=ca[0]).generate(PROMPT, SAMPLING)
    assert time.monotonic() - started < 1.0 * 2 + 0.5 + 1.5
    assert https.policy("trickle-head#1", timeout_s=1.0, ca_file=ca[0]).generate(PROMPT, SAMPLING) == OK


def test_a_trickled_tls_handshake_is_cut_at_the_timeout(ca):
    """The server answers the client's hello with a handshake record one byte every 0.2 s: each byte renews a
    socket timeout; the one deadline, watching the connection from before the handshake, ends it."""
    server = Server("--trickle-handshake", scheme="https")
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not end within 1.5 s"):
            read_within(urllib.request.Request(server.url + "/models"), 1.5, context=tls_context(ca[0]))
        assert time.monotonic() - started < 2.0
        policy = OpenAIPolicy(server.url, model="ok", retries=0, timeout_s=1.5, ca_file=ca[0])
        with pytest.raises(ServerError, match="unreachable or cut off.*did not end within 1.5 s"):
            policy.generate(PROMPT, SAMPLING)  # (after the /v1/models probe for the window, cut the same way)
        started = time.monotonic()
        with pytest.raises(ServerError, match="no OpenAI-compatible server answers"):
            policy.check_reachable(timeout_s=1.0)
        assert time.monotonic() - started < 1.5
    finally:
        server.close()
