"""The ``lightswe`` command: one dispatcher, each part adds its own subcommands.

Each part owns a ``cli.py`` with ``register(subparsers)``. A plain subcommand sets ``func`` (a callable taking
the parsed args and returning an exit code); a subcommand with a typed config registers with
``lightswe.settings.typed_command`` and parses its own argv (tyro: defaults and help from the dataclass,
``--config FILE``, dotted overrides). Parts are imported lazily, and no part imports torch, Docker or
transformers at start, so ``lightswe --help`` is quick and ``lightswe doctor`` works when an extra is missing.

Exit codes: 0 done; 1 the work failed (failed episodes, invalid instances, no engine); 2 a user mistake, said in
one line ``lightswe <cmd>: error: <what was wrong>; <the fix>``; 130 interrupted (Ctrl-C), with one line saying
how to resume. ``LIGHTSWE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

DESCRIPTION = ("Train software-engineering agents with RL: Gymnasium environments over Docker sandboxes, "
               "SWE-bench-format tasks, an agent loop, the CISPO learner.")
# Parts that contribute subcommands, in help order.
_PARTS = ("lightswe.envs.cli", "lightswe.tasks.cli", "lightswe.agent.cli")
# Commands that pick up where they stopped when run again with the same options.
_RESUMABLE = ("train", "rollout", "eval", "tasks build")


def _version() -> str:
    from lightswe import __version__

    return __version__


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``lightswe view: error: ...; see lightswe view --help``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lightswe", description=DESCRIPTION,
                                     epilog="`lightswe COMMAND --help` lists each command's options.")
    parser.add_argument("--version", action="version", version=f"lightswe {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _PARTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # the part has no CLI yet
                continue
            raise
        module.register(subparsers)
    return parser


def _command_words(argv: list[str]) -> str:
    words = []
    for arg in argv:
        if arg.startswith("-") or len(words) == 2:
            break
        words.append(arg)
    return " ".join(words[:2]) if words[:1] == ["tasks"] else " ".join(words[:1])


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_words(argv) or "lightswe"
    try:
        return _dispatch(argv)
    except BrokenPipeError:  # the reader left (`lightswe tasks show big.jsonl | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at the final flush
        return 141  # 128 + SIGPIPE, what the shell reports for a program the pipe closed on
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn this into a traceback
        how = ("; run the same command again to resume (finished work is kept)" if command in _RESUMABLE
               else "")
        print(f"\nlightswe {command}: interrupted{how}", file=sys.stderr, flush=True)
        if as_program:
            _leave_now(130)
        return 130
    except Exception as err:
        from lightswe.errors import InfrastructureError, UserInputError

        if os.environ.get("LIGHTSWE_DEBUG"):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, UserInputError):
            print(f"lightswe {command}: error: {first}", file=sys.stderr)
            return 2
        if isinstance(err, InfrastructureError):
            print(f"lightswe {command}: error: {first} (LIGHTSWE_DEBUG=1 shows the traceback)", file=sys.stderr)
            return 1
        if isinstance(err, (ValueError, ImportError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                            PermissionError)):  # bad input or a missing extra: say it, no trace
            print(f"lightswe {command}: error: {first} (LIGHTSWE_DEBUG=1 shows the traceback)", file=sys.stderr)
            return 2
        raise


def _leave_now(code: int) -> None:
    """After an interrupt, as the program: remove what is left (sandboxes, a local Ray cluster) and exit at
    once, without waiting for threads stuck in C code (a model's forward pass aborts the interpreter's exit)."""
    from lightswe.envs.sandbox import close_sandboxes

    close_sandboxes()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _dispatch(argv: list[str]) -> int:
    from lightswe.settings import find_typed

    parser = build_parser()
    typed = find_typed(argv)
    if typed is not None:
        words, rest = typed
        from lightswe.settings import TYPED

        return int(TYPED[words](rest) or 0)
    args, extra = parser.parse_known_args(argv)
    if extra:
        from lightswe.errors import UserInputError

        command = _command_words(argv)
        raise UserInputError(f"unrecognized arguments: {' '.join(extra)}; see lightswe {command} --help")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
