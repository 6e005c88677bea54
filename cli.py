"""The ``lightswe`` command: one dispatcher, each part adds its own subcommands.

Each part owns a ``cli.py`` with ``register(subparsers)``; a subcommand sets ``func`` (a callable taking the
parsed args and returning an exit code). Parts are imported lazily so that ``lightswe doctor`` works even
when an optional extra is missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lightswe.errors import LightSWEError

# Parts that contribute subcommands, in help order.
_PARTS = ("lightswe.envs.cli", "lightswe.tasks.cli", "lightswe.agent.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightswe", description=__doc__.splitlines()[0])
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # the command cleaned up on its way out (executors close their sandboxes)
        print(f"lightswe {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        if argv is None:  # as the program: leave now, not after threads stuck in C code (a model's forward pass)
            from lightswe.envs.sandbox import close_sandboxes

            close_sandboxes()
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():  # a local Ray cluster started by this command
                ray.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except (ValueError, ImportError, FileNotFoundError, LightSWEError) as err:  # bad input, no engine, missing extra
        if os.environ.get("LIGHTSWE_DEBUG"):
            raise
        print(f"lightswe {args.command}: error: {err} (LIGHTSWE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
