"""The agent's tools: bash, view, str_replace, create, search, submit, run inside a :class:`Sandbox`.

Every tool runs as the sandbox's non-root ``agent`` user, so the kernel enforces what the agent may touch;
file contents travel through the runner's stdin/stdout, never through a host path. A tool returns the text
the agent sees; a bad argument raises :class:`ToolError` whose message is that text (what was wrong and the
fix), which the environment turns into an observation. ``TOOL_SCHEMAS`` (OpenAI function format) is what the
agent's system prompt lists.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from lightswe.envs.sandbox import Sandbox
from lightswe.envs.tool_calls import ToolCall

MAX_FILE_BYTES = 2 * 1024 * 1024  # view/str_replace read at most this much of one file
VIEW_MAX_LINES = 400  # lines shown by one view when no range is given
SEARCH_MAX_LINES = 100


class ToolError(ValueError):
    """A tool call the tool cannot carry out; the message is shown to the agent as the observation."""


@dataclass(kw_only=True, slots=True)
class ToolResult:
    output: str
    submitted: bool = False
    exit_code: int = 0


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


_PATH = {"type": "string", "description": "file path, absolute or relative to the repository root /testbed"}
TOOL_SCHEMAS: list[dict[str, Any]] = [
    _function("bash", "Run a bash command in the repository (/testbed) as a non-root user, without network. "
              "Output (stdout+stderr) is capped; each command starts a fresh shell in /testbed.",
              {"command": {"type": "string", "description": "the command line"},
               "timeout": {"type": "number", "description": "seconds before the command is killed (default 60)"}},
              ["command"]),
    _function("view", "Show a file with line numbers (optionally lines start_line..end_line, 1-based, inclusive), "
              "or list a directory two levels deep.",
              {"path": _PATH, "start_line": {"type": "integer"}, "end_line": {"type": "integer"}}, ["path"]),
    _function("str_replace", "Replace the one occurrence of old_str in a file with new_str. old_str must match "
              "exactly (whitespace included) and be unique in the file; add surrounding lines to make it unique.",
              {"path": _PATH, "old_str": {"type": "string"}, "new_str": {"type": "string"}},
              ["path", "old_str", "new_str"]),
    _function("create", "Create a new file with the given content (parent directories are created). Fails if "
              "the file exists: edit existing files with str_replace.",
              {"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
    _function("search", "Search file contents with grep -rn (basic regular expression), skipping .git.",
              {"pattern": {"type": "string"}, "path": {"type": "string", "description": "where (default .)"}},
              ["pattern"]),
    _function("submit", "Finish: your changes in /testbed are graded by running the project's tests.", {}, []),
]
TOOL_NAMES = tuple(schema["function"]["name"] for schema in TOOL_SCHEMAS)


def _arg(call: ToolCall, name: str, kind: type, required: bool = True, default: Any = None) -> Any:
    if name not in call.arguments:
        if required:
            raise ToolError(f"{call.name}: missing argument {name!r}; it takes "
                            f"{list(_schema(call.name)['parameters']['properties'])}")
        return default
    value = call.arguments[name]
    if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ToolError(f"{call.name}: argument {name!r} must be {kind.__name__}, got {type(value).__name__} {value!r:.80}")
    return value


def _schema(name: str) -> dict[str, Any]:
    return next(s["function"] for s in TOOL_SCHEMAS if s["function"]["name"] == name)


def _read(box: Sandbox, path: str) -> str:
    result = box.exec(f"cat -- {shlex.quote(path)}", timeout=30, max_output_bytes=MAX_FILE_BYTES)
    if result.exit_code != 0:
        raise ToolError(f"cannot read {path}: {result.output.strip()[:300]}")
    if result.truncated:
        raise ToolError(f"{path} is larger than {MAX_FILE_BYTES} bytes; view a line range or use search/bash")
    return result.output


def _write(box: Sandbox, path: str, text: str) -> None:
    quoted = shlex.quote(path)
    result = box.exec(f"mkdir -p -- \"$(dirname -- {quoted})\" && cat > {quoted}", timeout=30, stdin=text.encode())
    if result.exit_code != 0:
        raise ToolError(f"cannot write {path}: {result.output.strip()[:300]}")


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{first + i:6d}\t{line}" for i, line in enumerate(lines))


def bash(box: Sandbox, call: ToolCall) -> ToolResult:
    command = _arg(call, "command", str)
    timeout = _arg(call, "timeout", float, required=False, default=box.config.default_timeout)
    if timeout <= 0:
        raise ToolError(f"bash: timeout must be > 0 seconds, got {timeout}")
    result = box.exec(command, timeout=min(timeout, 600.0))
    text = result.output if result.output.endswith("\n") or not result.output else result.output + "\n"
    return ToolResult(output=f"{text}[exit code {result.exit_code}]", exit_code=result.exit_code)


def view(box: Sandbox, call: ToolCall) -> ToolResult:
    path = _arg(call, "path", str)
    start = _arg(call, "start_line", int, required=False, default=None)
    end = _arg(call, "end_line", int, required=False, default=None)
    quoted = shlex.quote(path)
    result = box.exec(f"if [ -d {quoted} ]; then echo D; find {quoted} -maxdepth 2 -not -path '*/.git*' "
                      f"-not -name '__pycache__' | sort | head -n 500; elif [ -e {quoted} ]; then echo F; cat -- {quoted};"
                      " else echo N; fi", timeout=30, max_output_bytes=MAX_FILE_BYTES)
    kind, _, body = result.output.partition("\n")
    if kind == "N":
        raise ToolError(f"view: {path} does not exist; list a directory with view path='.' or search for a name")
    if kind == "D":
        return ToolResult(output=body)
    if result.exit_code != 0:
        raise ToolError(f"cannot read {path}: {body.strip()[:300]}")
    if result.truncated:
        raise ToolError(f"{path} is larger than {MAX_FILE_BYTES} bytes; use search, or bash with sed -n 'A,Bp'")
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    total = len(lines)
    first = 1 if start is None else start
    if end is None or end == -1:  # -1: to the end (as other agent harnesses accept)
        last = total if start is not None else min(total, VIEW_MAX_LINES)
    else:
        last = end
    if not 1 <= first <= max(total, 1) or last < first:
        raise ToolError(f"view: line range {first}..{last} is outside {path}, which has {total} lines; "
                        f"use 1 <= start_line <= end_line <= {total}")
    last = min(last, total)
    shown = _numbered(lines[first - 1:last], first)
    note = f"\n[{path}: lines {first}-{last} of {total}]" if (first, last) != (1, total) else ""
    return ToolResult(output=shown + note)


def str_replace(box: Sandbox, call: ToolCall) -> ToolResult:
    path, old, new = _arg(call, "path", str), _arg(call, "old_str", str), _arg(call, "new_str", str)
    if not old:
        raise ToolError("str_replace: old_str is empty; give the exact text to replace (use create for new files)")
    text = _read(box, path)
    count = text.count(old)
    if count == 0:
        raise ToolError(f"str_replace: old_str was not found in {path}; it must match exactly, including "
                        "indentation and whitespace (view the file to copy the lines)")
    if count > 1:
        at, lines_at, position = 0, [], text.find(old)
        while position >= 0:
            lines_at.append(text.count("\n", 0, position) + 1)
            at = position + 1
            position = text.find(old, at)
        raise ToolError(f"str_replace: old_str occurs {count} times in {path} (lines {lines_at}); include more "
                        "surrounding lines so that it is unique")
    position = text.find(old)
    updated = text.replace(old, new, 1)
    _write(box, path, updated)
    first = max(1, text.count("\n", 0, position) + 1 - 3)
    lines = updated.split("\n")
    last = min(len(lines), text.count("\n", 0, position) + 1 + new.count("\n") + 3)
    return ToolResult(output=f"Edited {path}. The changed region now reads:\n{_numbered(lines[first - 1:last], first)}")


def create(box: Sandbox, call: ToolCall) -> ToolResult:
    path, content = _arg(call, "path", str), _arg(call, "content", str)
    if box.exec(f"test -e {shlex.quote(path)}", timeout=10).exit_code == 0:
        raise ToolError(f"create: {path} already exists; edit it with str_replace (or remove it with bash first)")
    _write(box, path, content)
    return ToolResult(output=f"Created {path} ({len(content.encode())} bytes, {content.count(chr(10)) + 1} lines)")


def search(box: Sandbox, call: ToolCall) -> ToolResult:
    pattern, path = _arg(call, "pattern", str), _arg(call, "path", str, required=False, default=".")
    result = box.exec(f"grep -rnI --exclude-dir=.git -e {shlex.quote(pattern)} -- {shlex.quote(path)} "
                      f"| head -n {SEARCH_MAX_LINES + 1}", timeout=60)
    lines = result.output.splitlines()
    if not lines:
        return ToolResult(output=f"no matches for {pattern!r} in {path}")
    note = f"\n[more than {SEARCH_MAX_LINES} matches; narrow the pattern or the path]" if len(lines) > SEARCH_MAX_LINES else ""
    return ToolResult(output="\n".join(lines[:SEARCH_MAX_LINES]) + note)


def submit(box: Sandbox, call: ToolCall) -> ToolResult:
    return ToolResult(output="Submitted.", submitted=True)


TOOLS = {"bash": bash, "view": view, "str_replace": str_replace, "create": create, "search": search, "submit": submit}


def run_tool(box: Sandbox, call: ToolCall) -> ToolResult:
    """Run one call; raises ToolError (message for the agent) for unknown tools or bad arguments."""
    tool = TOOLS.get(call.name)
    if tool is None:
        raise ToolError(f"unknown tool {call.name!r}; the tools are {', '.join(TOOL_NAMES)}")
    allowed = set(_schema(call.name)["parameters"]["properties"])
    extra = set(call.arguments) - allowed
    if extra:
        raise ToolError(f"{call.name}: unexpected argument(s) {sorted(extra)}; it takes {sorted(allowed) or 'none'}")
    return tool(box, call)
