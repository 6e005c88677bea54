"""``lightswe setup``, ``lightswe doctor`` and ``lightswe demo``: the environment part of the command line."""

from __future__ import annotations

import argparse
import importlib
import os


def register(subparsers) -> None:
    setup = subparsers.add_parser("setup", help="start the Docker engine if needed and build the base image")
    setup.add_argument("--force", action="store_true", help="rebuild the base image even when it is current")
    setup.set_defaults(func=_setup)
    doctor = subparsers.add_parser("doctor", help="report Docker engine, base image, torch, GPU and extras")
    doctor.set_defaults(func=_doctor)
    reap = subparsers.add_parser("reap", help="remove sandboxes left by dead processes on this host")
    reap.set_defaults(func=_reap)
    demo = subparsers.add_parser("demo", help="a few episodes of lightswe/SWE-v0 driven by a scripted agent")
    demo.add_argument("--episodes", type=int, default=3, help="episodes to run (alternating fix / no fix)")
    demo.add_argument("--tasks", default=None, help="task instances, any --tasks form of rollout (a .jsonl/.json/"
                      ".parquet file, a dataset directory, pool:test, ...; default: the embedded demo task); the "
                      "episodes take them in order")
    demo.set_defaults(func=_demo)


def _setup(args: argparse.Namespace) -> int:
    from lightswe.envs import engine

    try:
        client = engine.ensure_engine()
        tag = engine.ensure_base_image(client, force=args.force)
    except engine.EngineError as err:
        print(f"setup failed: {err}")
        return 1
    print(f"Docker engine answers; base image {tag} ready")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from lightswe.envs import engine

    rows: list[tuple[str, bool, str]] = []
    problem = engine.engine_problem()
    rows.append(("Docker engine", problem is None,
                 "answers" if problem is None else problem))  # "no engine at X (...); fix: ..."
    if problem is None:
        image_problem = engine.base_image_problem()
        rows.append(("base image", image_problem is None,
                     engine.BASE_IMAGE if image_problem is None else f"{image_problem}; fix: python -m lightswe setup"))
    else:
        rows.append(("base image", False, "unknown without an engine; fix: python -m lightswe setup"))
    try:
        import torch

        rows.append(("torch", True, torch.__version__))
        cuda = torch.cuda.is_available()
        rows.append(("GPU", cuda, torch.cuda.get_device_name(0) if cuda else
                     "no CUDA device (fine for the environment and tests; training at scale needs one)"))
    except ImportError:
        rows.append(("torch", False, "missing; fix: pip install torch"))
    extras = {"vllm": "vllm", "ray": "ray", "transformers": "hf", "pyarrow": "parquet", "triton": None}
    for module, extra in extras.items():
        try:
            found = importlib.import_module(module)
            rows.append((module, True, getattr(found, "__version__", "installed")))
        except Exception:  # noqa: BLE001 - a broken optional import counts as missing
            fix = f"pip install -e '.[{extra}]'" if extra else "comes with CUDA builds of torch (GPU machines)"
            rows.append((module, False, f"optional, not installed; fix: {fix}"))
    width = max(len(name) for name, _, _ in rows)
    for name, ok, detail in rows:
        print(f"{'ok ' if ok else '-- '} {name:<{width}}  {detail}")
    return 0 if rows[0][1] and rows[1][1] else 1


def _reap(args: argparse.Namespace) -> int:
    from lightswe.envs.sandbox import reap_orphans

    removed = reap_orphans()
    print(f"removed {len(removed)} orphaned sandbox container(s)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lightswe.envs.demo import run_demo
    from lightswe.errors import UserInputError

    if args.episodes < 1:
        raise UserInputError(f"--episodes {args.episodes}: must be >= 1; fix: e.g. --episodes 3")
    if args.tasks:
        from lightswe.tasks.datasets import looks_like_dataset

        if not (os.path.isfile(args.tasks) or looks_like_dataset(args.tasks)):
            raise UserInputError(f"--tasks {args.tasks}: does not exist; fix: pass task instances (a .jsonl/.json/"
                                 ".parquet file, a dataset directory, pool:test ...), or leave it out for the "
                                 "embedded demo task")

    return run_demo(episodes=args.episodes, tasks=args.tasks or os.environ.get("LIGHTSWE_TASKS"))
