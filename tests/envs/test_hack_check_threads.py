"""hack_check's parse under threads: episodes graded side by side in a threaded rollout parse at once.

CPython keeps the AST constructor's recursion depth in interpreter-wide state (python/cpython#106905): a thread
switch inside a parse (a GC finalizer that releases the GIL) made another thread's parse raise SystemError "AST
constructor recursion depth mismatch" in CI (3.11.7), and the episode was lost as failed. The switch cannot be
forced deterministically, so the first test checks the serialised parse gives every thread the serial result and
the second drives the retry with an ast.parse that raises that SystemError once (standing in for the race).
"""

from __future__ import annotations

import ast
import threading

from lightswe.envs import hack_check

SOURCE = "import pytest\n" + "\n".join(
    f"def test_{i}(x):\n    assert [y for y in range(x) if (y + {i}) * 2 > 3 and not y] == []" for i in range(200))


def test_parallel_findings_equal_the_serial_ones():
    expected = hack_check.findings(SOURCE)
    results, errors = [], []

    def check() -> None:
        try:
            for _ in range(10):
                results.append(hack_check.findings(SOURCE))
        except Exception as err:  # noqa: BLE001 - any error is the failure this test is about
            errors.append(err)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 40 and all(r == expected for r in results)


def test_a_spurious_depth_mismatch_is_parsed_again(monkeypatch):
    real, calls = ast.parse, []

    def racing(source, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=42, after=38)")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", racing)
    tree = hack_check.parse_python("x = 1\n")
    assert isinstance(tree, ast.Module) and len(calls) == 2
    monkeypatch.setattr(ast, "parse", lambda *a, **k: (_ for _ in ()).throw(SystemError("other")))
    try:
        hack_check.parse_python("x = 1\n")
    except SystemError as err:
        assert str(err) == "other"  # any other SystemError is not swallowed
    else:
        raise AssertionError("parse_python hid a SystemError that is not the depth mismatch")
