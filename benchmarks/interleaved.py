"""``--compare OLD``: run a benchmark script under an old and the current code, alternating, for before/after tables.

The machine is shared, so the two sides take turns: round 1 runs old then new, round 2 new then old, and so on;
the noise of a busy minute falls on both columns. Each run is ``python SCRIPT --json ARGS...`` in a fresh process
whose ``PYTHONPATH`` is ``OLD`` (a folder whose ``lightswe`` is the old code) or the current one; the script
prints its results as JSON on its last stdout line. Used by ``sandbox.py`` and ``rollout.py`` (imported as a
sibling module: the scripts run as ``python benchmarks/NAME.py``).

Example::

    add_compare_options(parser)
    ...
    runs = run_interleaved(__file__, [["--concurrency", "1"], ["--concurrency", "4"]], old=args.compare,
                           rounds=args.rounds)
    runs[1]["new"]  # the JSON of each round's new run at concurrency 4, in round order
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    """``--compare OLD_PYTHONPATH``, ``--rounds N`` and the hidden ``--json`` (what each interleaved run prints)."""
    parser.add_argument("--compare", default=None, metavar="OLD_PYTHONPATH",
                        help="a PYTHONPATH whose lightswe is the old code: interleaved before/after columns")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved old/new runs with --compare")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)


def python_paths(old: str) -> dict[str, str]:
    """``{"old": OLD, "new": the current PYTHONPATH}`` (the table's header names both)."""
    return {"old": old, "new": os.environ.get("PYTHONPATH", "")}


def run_interleaved(script: str, settings: Sequence[Sequence[str]], *, old: str, rounds: int) -> list[dict[str, list[Any]]]:
    """Run ``script --json *argv`` for every ``argv`` in ``settings``, under the old and the new code, ``rounds`` times.

    Order: round by round; within a round, setting by setting; within a setting old then new in even rounds (0,
    2, ...) and new then old in odd ones. Returns one ``{"old": [...], "new": [...]}`` per setting, each list the
    parsed JSON of the runs' last stdout lines in round order. Progress goes to stderr.

    Raises:
        SystemExit: a run exited non-zero or printed no JSON (its stderr tail in the message).
    """
    if rounds < 1:
        raise SystemExit(f"--rounds {rounds}: must be >= 1")
    paths = python_paths(old)
    results: list[dict[str, list[Any]]] = [{"old": [], "new": []} for _ in settings]
    for round_ in range(rounds):
        for index, argv in enumerate(settings):
            for which in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                done = subprocess.run([sys.executable, script, "--json", *argv], capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": paths[which]}, check=False)
                lines = done.stdout.strip().splitlines()
                if done.returncode != 0 or not lines:
                    raise SystemExit(f"the {which} run of {' '.join(argv) or script} failed (exit {done.returncode}):"
                                     f"\n{done.stderr[-2000:]}")
                try:
                    results[index][which].append(json.loads(lines[-1]))
                except json.JSONDecodeError as err:
                    raise SystemExit(f"the {which} run of {' '.join(argv) or script} printed no JSON on its last "
                                     f"line ({err}): {lines[-1][:200]!r}") from None
                print(f"round {round_ + 1}{', ' + ' '.join(argv) if argv else ''}: {which} done", file=sys.stderr,
                      flush=True)
    return results
