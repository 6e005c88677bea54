"""Typed settings on the command line: dataclass configs -> options (tyro), config files, resume checks.

Every subcommand that has settings (``train``, ``rollout``, ``eval``, ``tasks build``, ``tasks validate``) is
described by one ``@dataclass`` config; :func:`parse` turns its fields into options with their defaults and
help (nested configs become dotted options: ``--learner.lr 1e-3``), after

1. ``--config FILE`` (TOML, YAML or JSON; a run's own ``config.json`` works): the file's values become the
   defaults that the other options override;
2. shortcuts: short spellings of common dotted options (``--lr`` -> ``--learner.lr``), listed in ``--help``.

The parsed config is validated by its ``__post_init__`` (one :class:`~lightswe.errors.UserInputError` line per
mistake). A parse error (unknown option, bad type) also ends in one line: ``lightswe <cmd>: error: ...``.

Resume safety: :func:`check_resume` compares a config with the ``config.json`` an earlier run left in the same
folder and refuses each changed setting by name, unless the user allowed it (``--allow-change lr,steps``).

Example::

    cfg, allow = parse(TrainConfig, ["--steps", "3", "--lr", "1e-3"], prog="lightswe train",
                       shortcuts={"--lr": "--learner.lr"})
    check_resume(Path(cfg.out_dir), cfg, allow=allow, free={"sampler.concurrency"})
    write_config(Path(cfg.out_dir), cfg)
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from lightswe.durable import atomic_file
from lightswe.errors import UserInputError

T = TypeVar("T")
CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------------------- config files
def load_file(path: str | Path) -> dict:
    """A TOML, YAML or JSON file as a nested dict (by extension; ``.yml``/``.yaml`` need PyYAML).

    Raises:
        UserInputError: missing or unreadable file, unknown extension, not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"--config {path}: {'is a directory' if path.is_dir() else 'does not exist'}; "
                             f"expected a .toml, .yaml or .json file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:
                raise UserInputError(f"--config {path}: YAML needs PyYAML (pip install pyyaml), or use "
                                     f".toml / .json") from err
            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise UserInputError(f"--config {path}: unknown extension {suffix!r}; expected .toml, .yaml, .yml "
                                 f"or .json")
    except UserInputError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(f"--config {path}: not valid {suffix[1:].upper()}: {first}") from err
    if not isinstance(data, dict):
        raise UserInputError(f"--config {path}: expected a mapping of settings at the top, got "
                             f"{type(data).__name__}")
    return data


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _describe(tp) -> str:
    """A type as a user reads it in an error: ``int``, ``2 numbers``, ``one of 'keep', 'zero'``, ``a section``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (tuple, list):
        plural = {int: "whole numbers", float: "numbers", str: "strings", bool: "booleans"}
        if origin is tuple and args and args[-1] is not ...:
            return f"a list of {len(args)} {plural.get(args[0], 'values')}" if len(set(args)) == 1 else \
                "a list of " + ", ".join(_describe(a) for a in args)
        return f"a list of {plural.get(args[0], 'values')}" if args else "a list"
    if dataclasses.is_dataclass(tp):
        return "a section of settings (a table/mapping)"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
            Path: "a path (string)"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fits(value, tp) -> bool:
    """Whether a value read from a config file has the field's type (ints count as floats, lists as tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not ...:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is Path:
        return isinstance(value, (str, Path))
    return not isinstance(tp, type) or isinstance(value, tp)


def from_dict(cls: type[T], data: dict, *, where: str = "") -> T:
    """Build the dataclass ``cls`` from nested ``data`` (unknown keys refused by their dotted name; lists become
    tuples where the field is a tuple; paths become ``Path``). Runs each ``__post_init__`` (validation)."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "command" and not where and "command" not in names:
            continue  # written by write_config: which subcommand made the file
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else ""
            raise UserInputError(f"--config: unknown setting {where + key!r}{hint} (settings here: "
                                 f"{', '.join(sorted(names))})")
        if isinstance(value, str) and _strip_optional(hints[name]) is float:
            with contextlib.suppress(ValueError):  # PyYAML reads 1e-3 (no dot) as a string: YAML 1.1's float form
                value = float(value)
        if not _fits(value, hints[name]):
            raise UserInputError(f"--config: {where}{key} = {json.dumps(value, default=str)}: expected "
                                 f"{_describe(hints[name])}; fix: correct it in the file")
        tp = _strip_optional(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            base = _default_of(cls, name)  # a partial section keeps the parent's defaults for the rest
            merged = _merge(to_dict(base), value) if dataclasses.is_dataclass(base) else value
            kwargs[name] = from_dict(tp, merged, where=f"{where}{name}.")
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        elif tp is Path and isinstance(value, str):
            kwargs[name] = Path(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserInputError(f"--config: settings of {where or 'the command'} do not fit: {err}") from err


def _default_of(cls, name: str):
    found = next(f for f in dataclasses.fields(cls) if f.name == name)
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return None if found.default is dataclasses.MISSING else found.default


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        key = key.replace("-", "_")
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_dict(cfg) -> dict:
    """The config as JSON-ready nested dict (paths and other objects as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"learner": {"lr": 1}}`` -> ``{"learner.lr": 1}`` (lists kept as values)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_config(folder: Path, cfg, *, command: str) -> Path:
    """Write the resolved config (every setting, defaults included, and the ``command`` that made the folder) as
    ``folder/config.json``, atomically. ``--config folder/config.json`` reads it back."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    with atomic_file(path) as handle:
        handle.write(json.dumps({"command": command, **to_dict(cfg)}, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------- resume safety
def _norm(name: str) -> str:
    return name.strip().lstrip("-").replace("-", "_")


def allowed_keys(allow: tuple[str, ...] | list[str], keys, shortcuts: dict[str, str] | None = None) -> set[str]:
    """The dotted setting keys that ``--allow-change`` names select, out of ``keys`` (a config's flattened keys).

    Each name is one of: an exact dotted key (``learner.lr``, ``steps``; dashes or a leading ``--`` are fine:
    ``--warm-start.steps``); a shortcut of the command (``lr`` or ``--lr`` for ``learner.lr``); or a glob in
    :mod:`fnmatch` syntax (``learner.*``, ``*.lr``). A bare last part no longer selects every key of that name:
    ``lr`` is ``learner.lr`` through its shortcut, never ``warm_start.lr``.

    Raises:
        UserInputError: a name (or glob) that selects no key; the message names the close ones and every valid key.
    """
    import fnmatch

    keys = sorted(keys)
    long_of = {_norm(short): _norm(long) for short, long in (shortcuts or {}).items()}
    selected: set[str] = set()
    for raw in allow:
        name = long_of.get(_norm(raw), _norm(raw))
        hits = fnmatch.filter(keys, name) if any(c in name for c in "*?[") else [name] if name in keys else []
        if not hits:
            last = name.rsplit(".", 1)[-1]  # a bare last part: the keys that end in it (or close to it)
            close = [k for k in keys if difflib.get_close_matches(last, [k.rsplit(".", 1)[-1]], cutoff=0.75)]
            close = list(dict.fromkeys(difflib.get_close_matches(name, keys, n=3, cutoff=0.6) + close))[:6]
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise UserInputError(f"--allow-change {raw!r}: no setting of this command has that name; fix: {hint}name "
                                 f"dotted keys or a glob such as 'learner.*' (keys: {', '.join(keys)})")
        selected.update(hits)
    return selected


def holds_work(folder: Path) -> bool:
    """Whether a run folder holds anything a rerun would reuse (an episode, even one under way, a checkpoint, a
    metrics row): any file, at any depth, but ``config.json``, an empty ``metrics.jsonl`` and TensorBoard event
    files (logs, which a rerun purges)."""
    for path in folder.rglob("*"):
        if path.name in (CONFIG_FILE, CONFIG_FILE + ".tmp") or path.name.startswith("events.out.tfevents."):
            continue
        if path.is_file() and not (path.name == "metrics.jsonl" and path.stat().st_size == 0):
            return True
    return False


def check_resume(folder: Path, cfg, *, allow: tuple[str, ...] = (), free: frozenset[str] | set[str] = frozenset(),
                 shortcuts: dict[str, str] | None = None, command: str) -> None:
    """Refuse to continue a run in ``folder`` with settings other than those in its ``config.json``.

    ``free``: dotted settings that may always change (how many workers, which device); ``allow``: the user's
    ``--allow-change`` names, see :func:`allowed_keys` (checked even for a new run, so a typo fails at once). A
    folder without ``config.json``, or without work in it (:func:`holds_work`: the earlier command stopped before
    any, e.g. on a model or task that did not load), is a new run; one made by another ``command`` is refused.
    Settings only one side knows (an older version) are skipped.

    Raises:
        UserInputError: an ``allow`` name that matches no setting; or one line naming every changed setting
            (old -> new) and the three ways out.
    """
    new = flatten(to_dict(cfg))
    allowed = allowed_keys(allow, new, shortcuts)
    path = folder / CONFIG_FILE
    if not path.is_file():
        return
    if not holds_work(folder):
        return  # the earlier run stopped before any work (a setting refused, a model or task that did not load)
    try:
        old = flatten(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return  # unreadable: the run rewrites it
    made_by = old.pop("command", command)
    if made_by != command:
        raise UserInputError(f"{folder} holds a `lightswe {made_by}` run, not a {command} one; fix: use another "
                             f"--out")
    changed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k]
               and k not in free and k not in allowed]
    if changed:
        names = ",".join(k.split(" ")[0] for k in changed)
        raise UserInputError(f"{folder} holds a run made with other settings: {'; '.join(changed)}. Resume with "
                             f"the same settings, pass --allow-change {names} to continue with the new ones, or "
                             f"use a new --out")


# ----------------------------------------------------------------------------------------- the parser
# Options that may be given without a value, and the value that then means (a bare ``--ray``: a local cluster).
BARE_VALUES = {"--ray": "local"}


def _fill_bare(argv: list[str]) -> list[str]:
    """Each option of :data:`BARE_VALUES` given bare (no ``=``, no value after it) followed by its value, as
    given: ``--ray --steps 2`` -> ``--ray local --steps 2``. The one place a bare option gets its value; every
    later step (conflicts, shortcuts, tyro) sees it spelled out."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in BARE_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(BARE_VALUES[arg])
    return out


def _expand(argv: list[str], shortcuts: dict[str, str]) -> list[str]:
    """Shortcut spellings -> their dotted options (``--lr=1`` too)."""
    out: list[str] = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        target = shortcuts.get(name, name)
        out.append(f"{target}={value}" if eq else target)
    return out


def _take(argv: list[str], option: str) -> tuple[list[str], list[str]]:
    """Remove every ``option VALUE`` / ``option=VALUE`` from argv; returns (rest, the values in order)."""
    rest, values, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == option:
            if i + 1 >= len(argv):
                raise UserInputError(f"{option} needs a value")
            values.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest, values


def _options(cls, keep, prefix: str = "") -> set[str]:
    """The options of ``cls`` (nested configs dotted, ``--sampler.vllm-args``) whose field's type (Optional
    stripped) passes ``keep``."""
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        tp = _strip_optional(_hints(cls)[f.name])
        name = prefix + f.name.replace("_", "-")
        if dataclasses.is_dataclass(tp):
            out |= _options(tp, keep, name + ".")
        elif keep(tp):
            out.add("--" + name)
    return out


def sequence_options(cls) -> set[str]:
    """The options of ``cls`` (nested configs dotted) whose field is a variable-length ``tuple[X, ...]`` or
    ``list[X]``: ``{"--sampler.vllm-args", ...}``."""
    return _options(cls, lambda tp: typing.get_origin(tp) is list
                    or (typing.get_origin(tp) is tuple and typing.get_args(tp)[-1:] == (...,)))


def bool_options(cls) -> set[str]:
    """The flag options of ``cls`` (nested configs dotted) whose field is a ``bool``: ``{"--progress", ...}`` (tyro
    spells the false side ``--no-progress``, ``--sampler.no-batch-invariant``)."""
    return _options(cls, lambda tp: tp is bool)


def refuse_conflicts(argv: list[str], cls, shortcuts: dict[str, str]) -> None:
    """Refuse a single-valued option given twice with different values, in any spelling (``--lr 1 --learner.lr 2``,
    ``--steps 3 --steps=5``, ``--progress --no-progress``): argparse would keep the last one silently. The same
    value twice passes; list options (:func:`sequence_options`) collect every value instead.

    Raises:
        UserInputError: naming both spellings and values, and the fix.
    """
    lists, flags = sequence_options(cls), bool_options(cls)
    seen: dict[str, tuple[str, str]] = {}  # canonical option -> (as given, value)
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--":
            continue
        given, eq, value = arg.partition("=")
        name = shortcuts.get(given, given)
        name = "--" + name[2:].replace("_", "-")
        head, _, last = name.rpartition(".")
        negated = (head + "." if head else "--") + last.removeprefix("--").removeprefix("no-")
        if last.removeprefix("--").startswith("no-") and negated in flags:
            name, value = negated, "false"
        elif name in flags and not eq:
            value = "true"
        elif not eq:
            end = next((j for j in range(i + 1, len(argv)) if argv[j].startswith("--")), len(argv))
            value = " ".join(argv[i + 1:end])
        if name in lists:
            continue
        if name in seen and seen[name][1] != value:
            first, before = seen[name]
            raise UserInputError(f"{name} given twice with different values ({first} {before}, {given} {value}); "
                                 "fix: pass it once")
        seen.setdefault(name, (given, value))


def _merge_repeats(argv: list[str], options: set[str]) -> list[str]:
    """Every occurrence of a sequence option folded into its first, values in order: ``--vllm-arg a=1 --vllm-arg
    b=2`` -> ``--sampler.vllm-args a=1 b=2`` (argparse would keep only the last occurrence)."""
    def canonical(arg: str) -> str | None:
        name = arg.partition("=")[0]
        spelled = "--" + name[2:].replace("_", "-") if name.startswith("--") else name
        return spelled if spelled in options else None

    out: list[str] = []
    first: dict[str, int] = {}  # option -> its index in out
    values: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        option = canonical(argv[i])
        if option is None:
            out.append(argv[i])
            i += 1
            continue
        name, eq, value = argv[i].partition("=")
        taken = [value] if eq else []
        i += 1
        while not eq and i < len(argv) and not argv[i].startswith("--"):
            taken.append(argv[i])
            i += 1
        if option not in first:
            first[option] = len(out)
            out.append(option)
        values.setdefault(option, []).extend(taken)
    for option, index in sorted(first.items(), key=lambda item: -item[1]):
        out[index + 1:index + 1] = values[option]
    return out


def _one_line(text: str) -> str:
    """tyro's error box (printed without a terminal) as one line: the message, and its suggestion if any."""
    lines = [ln.strip() for ln in text.splitlines()]
    parts = [ln for ln in lines if ln and not set(ln) <= set("-─ ")]
    if len(parts) < 2:
        return text.strip() or "could not parse the options"
    message = parts[1]  # parts[0] is the box's title
    ours = re.match(r"^Error parsing (?!--)[\w.-]+: (.*)$", message)  # a __post_init__ error: ours, as is
    if ours:
        return ours.group(1)
    if "Perhaps you meant:" in parts:
        guesses = [p.split()[0] for p in parts[parts.index("Perhaps you meant:") + 1:] if p.startswith("--")]
        if guesses:
            message += f" (did you mean {' or '.join(dict.fromkeys(guesses))}?)"
    return message


def parse(cls: type[T], argv: list[str], *, prog: str, description: str = "",
          shortcuts: dict[str, str] | None = None) -> tuple[T, tuple[str, ...]]:
    """``argv`` -> a validated ``cls`` and the ``--allow-change`` names (repeatable, comma-separated; checked by
    :func:`check_resume`).

    A list option (:func:`sequence_options`) given several times keeps every value in order (``--vllm-arg a=1
    --vllm-arg b=2``); the command line's values replace a ``--config`` file's.

    Raises:
        UserInputError: a bad option or value, or ``--config`` given twice (one line; ``--help`` and ``-h`` print
            the help and exit 0).
    """
    import tyro

    shortcuts = shortcuts or {}
    argv, config_files = _take(list(argv), "--config")
    argv, allow = _take(argv, "--allow-change")
    if len(config_files) > 1:
        raise UserInputError(f"--config given {len(config_files)} times ({', '.join(config_files)}); fix: pass one "
                             "file (options after it override its values)")
    default = from_dict(cls, load_file(config_files[0])) if config_files else None
    argv = _fill_bare(argv)
    refuse_conflicts(argv, cls, shortcuts)
    argv = _merge_repeats(_expand(argv, shortcuts), sequence_options(cls))
    epilog = ("--config FILE (TOML, YAML or JSON, e.g. an earlier run's config.json) sets defaults that the "
              "options override; --allow-change A,B lets a resumed run change those settings.")
    if shortcuts:
        epilog += " Shortcuts: " + ", ".join(f"{k} = {v}" for k, v in shortcuts.items()) + "."
    kwargs = {"args": argv, "prog": prog, "description": f"{description}\n\n{epilog}".strip(), "default": default}
    if "-h" in argv or "--help" in argv:
        return tyro.cli(cls, **kwargs), ()
    buf = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "10000"  # one line per message in the captured error box
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            cfg = tyro.cli(cls, **kwargs)
    except SystemExit as exc:
        if exc.code in (0, None):
            print(buf.getvalue(), end="")
            raise
        message = _one_line(buf.getvalue())
        if "; fix:" not in message:
            message = message.rstrip(". ") + f"; see {prog} --help"
        raise UserInputError(message) from None
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    names = tuple(a.strip() for given in allow for a in given.split(",") if a.strip())
    return cfg, names


# ----------------------------------------------------------------------------------------- subcommands
# Subcommands whose options come from a config: command words -> run(argv after the words) -> exit code. The
# dispatcher (lightswe.cli) sends their argv here untouched, so tyro sees --help and every option.
TYPED: dict[tuple[str, ...], typing.Callable[[list[str]], int]] = {}


def typed_command(subparsers, words: tuple[str, ...], *, help: str, run) -> None:
    """Register ``lightswe <words...>``: listed in the parent's help, parsed by ``run(argv)`` (see :func:`parse`)."""
    subparsers.add_parser(words[-1], help=help, add_help=False)
    TYPED[words] = run


def find_typed(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """The typed subcommand ``argv`` starts with, and the rest of argv; None if it names none."""
    for words in sorted(TYPED, key=len, reverse=True):
        if tuple(argv[:len(words)]) == words:
            return words, argv[len(words):]
    return None


def check_out_dir(out: str | Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file or lies under a file (one line, before any work).

    Raises:
        UserInputError: naming the file in the way.
    """
    path = Path(out)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"lies under the file {parent}"
            raise UserInputError(f"{option} {out}: {where}; fix: pass a directory path (created if missing)")


def check_out_file(out: str | Path, option: str, *, name: str = "out.jsonl") -> None:
    """Refuse an output file path that is a directory or lies under a file (one line, before any work; its
    parent folders are created when it is written). ``name``: the file name the fix suggests inside a directory.

    Raises:
        UserInputError: naming what is in the way and the fix.
    """
    path = Path(out)
    if path.is_dir():
        raise UserInputError(f"{option} {out}: is a directory; fix: pass a file path, e.g. {path / name}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UserInputError(f"{option} {out}: lies under the file {parent}; fix: pass a path in a folder")
