"""The agent's tools: bash, view, str_replace, create, search, submit, run inside a :class:`Sandbox`.

Every tool runs as the sandbox's non-root ``agent`` user, so the kernel enforces what the agent may touch;
file contents travel through the runner's stdin/stdout (base64 on the way out), never through a host path.
A tool returns the text the agent sees; a bad argument raises :class:`ToolError` whose message is that text
(what was wrong and the fix), which the environment turns into an observation. ``TOOL_SCHEMAS`` (OpenAI
function format) is what the agent's system prompt lists.

Guarantees (tests in ``tests/envs/test_tools*.py``, against the real engine):

- **Byte-exact edits.** Files are read as bytes and decoded as UTF-8 with ``surrogateescape``: ``str_replace``
  rewrites exactly the matched span and every other byte of the file (non-UTF-8 bytes, a BOM, NUL bytes, a
  missing final newline) is written back as it was; ``create`` writes the content's UTF-8 bytes as given.
  A write goes to a temporary file beside the target that replaces it in one rename (``create``: one hard
  link, so an existing name is never overwritten): a full disk or a file-size limit leaves the old file whole.
- **Honest view.** What the observation cannot carry is shown as an escape: a byte that is not UTF-8 as
  ``\\xNN`` (80-ff), a control character as ``\\xNN`` (00-1f, 7f) or ``\\r``, any other non-printable
  character (BOM, NBSP, zero-width, C1) as ``\\uXXXX`` and one outside the Basic Multilingual Plane as
  ``\\UXXXXXXXX``; a note above the lines says so. ``str_replace`` accepts the same escapes in ``old_str`` and
  ``new_str`` when ``old_str`` is not found as written (so a line copied from ``view`` can be edited).
- **Line endings.** ``view`` shows a CRLF line without its ``\\r`` and says above the lines which lines end
  with CRLF (a file of bare-``\\r`` lines is split at them, with a note); ``str_replace`` matches ``old_str`` whatever its line endings (``\\n`` in ``old_str`` matches
  ``\\r\\n`` in the file) and writes ``new_str`` with the line ending of the text it replaces.
- **What view hides.** A directory is listed two levels deep with everything but ``.git`` and
  ``__pycache__`` (dot-files such as ``.github/`` and ``.gitignore`` are listed); a file's lines longer than
  ``VIEW_MAX_LINE_CHARS`` are cut with a note, and a view stops with a note where the observation would
  overflow.
- **Agent text is an operand, never an option or code.** Paths and patterns reach the in-container shell
  only as environment variables (``"$LIGHTSWE_PATH"``), always after ``--`` or as an absolute path (``find``
  has no ``--``); only ``bash``'s ``command`` is run as a command line, which is that tool's job.
- **Every argument value gives an observation**, never an exception: wrong JSON types, ``null``, lone
  surrogates, NUL characters in paths or commands, NaN/Infinity/negative/huge numbers, booleans for numbers.
"""

from __future__ import annotations

import base64
import bisect
import math
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

from lightswe.envs.sandbox import Sandbox
from lightswe.envs.tool_calls import ToolCall
from lightswe.errors import ActionError

MAX_FILE_BYTES = 2 * 1024 * 1024  # view/str_replace read at most this much of one file
VIEW_MAX_LINES = 400  # lines shown by one view when no range is given
VIEW_MAX_LINE_CHARS = 2_000  # longer lines are cut in view (the file is not)
DIR_MAX_ENTRIES = 500
SEARCH_MAX_LINES = 100
SEARCH_MAX_LINE_CHARS = 300
MAX_TIMEOUT_S = 600.0
SEARCH_TIMEOUT_S = 60.0  # one search; past it the search says so


class ToolError(ActionError):
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
               "timeout": {"type": "number", "description": "seconds before the command is killed (default 60, "
                                                            "at most 600)"}},
              ["command"]),
    _function("view", "Show a file with line numbers (optionally lines start_line..end_line, 1-based, inclusive), "
              "or list a directory two levels deep. Characters that cannot be shown appear as escapes (\\xNN, "
              "\\r, \\uXXXX); a note says when a file has CRLF line endings or is not valid UTF-8.",
              {"path": _PATH, "start_line": {"type": "integer"}, "end_line": {"type": "integer"}}, ["path"]),
    _function("str_replace", "Replace the one occurrence of old_str in a file with new_str. old_str must match "
              "exactly (whitespace included; line endings need not) and be unique in the file; add surrounding "
              "lines to make it unique. Escapes shown by view (\\xNN, \\r, \\uXXXX) may be used. Every other "
              "byte of the file is kept.",
              {"path": _PATH, "old_str": {"type": "string"}, "new_str": {"type": "string"}},
              ["path", "old_str", "new_str"]),
    _function("create", "Create a new file with the given content (parent directories are created). Fails if "
              "the file exists: edit existing files with str_replace.",
              {"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
    _function("search", "Search file contents with grep -rn (basic regular expression, one line), skipping .git, "
              "binary files, devices, FIFOs and sockets.",
              {"pattern": {"type": "string"}, "path": {"type": "string", "description": "where (default .)"}},
              ["pattern"]),
    _function("submit", "Finish: your changes in /testbed are graded by running the project's tests.", {}, []),
]
TOOL_NAMES = tuple(schema["function"]["name"] for schema in TOOL_SCHEMAS)


def _schema(name: str) -> dict[str, Any]:
    return next(s["function"] for s in TOOL_SCHEMAS if s["function"]["name"] == name)


# ------------------------------------------------------------------------------------------- arguments
_MISSING = object()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _kind(value: Any) -> str:
    """The JSON type of ``value`` and a bounded rendering, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        text = repr(value) if not isinstance(value, float) or math.isfinite(value) else \
            {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(value)]
        return f"number {text[:40]}{'...' if len(text) > 40 else ''}"
    if isinstance(value, str):
        return f"string '{show(value[:60])}'{'...' if len(value) > 60 else ''}"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    return type(value).__name__


def _value(call: ToolCall, name: str, required: bool) -> Any:
    value = call.arguments.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            what = "missing" if value is _MISSING else "null"
            raise ToolError(f"{call.name}: argument {name!r} is {what}; it takes "
                            f"{list(_schema(call.name)['parameters']['properties'])} (required: "
                            f"{_schema(call.name)['parameters']['required']})")
        return _MISSING
    return value


def _text(call: ToolCall, name: str, *, required: bool = True, default: str | None = None,
          command_line: bool = False) -> str:
    """A string argument: no lone surrogates; no NUL where it goes to a command line or path."""
    value = _value(call, name, required)
    if value is _MISSING:
        return default  # type: ignore[return-value]
    if not isinstance(value, str):
        raise ToolError(f"{call.name}: argument {name!r} must be a string, got {_kind(value)}")
    bad = _SURROGATE.search(value)
    if bad:
        raise ToolError(f"{call.name}: argument {name!r} holds a lone surrogate {bad.group()!r} at character "
                        f"{bad.start()}, which is not a character and cannot be written as UTF-8 (JSON \\uD800-\\uDFFF "
                        "escapes must come in high-low pairs); write the character itself, or a byte that is not "
                        "UTF-8 as the \\xNN escape that view shows")
    if command_line and "\0" in value:
        raise ToolError(f"{call.name}: argument {name!r} holds a NUL character (\\u0000) at character "
                        f"{value.index(chr(0))}; a path or command line cannot hold one (write NUL bytes into "
                        "files with create/str_replace content, or printf '\\0' in bash)")
    return value


def _whole(call: ToolCall, name: str) -> int | None:
    """An optional integer argument: ints, integral floats and digit strings; never booleans or NaN."""
    value = _value(call, name, required=False)
    if value is _MISSING:
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d{1,30}\s*", value):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ToolError(f"{call.name}: argument {name!r} must be a whole number of lines, got {_kind(value)}")


def _seconds(call: ToolCall, name: str, default: float) -> tuple[float, str]:
    """A positive, finite number of seconds (capped at ``MAX_TIMEOUT_S``) and a note when it was capped."""
    value = _value(call, name, required=False)
    if value is _MISSING:
        return default, ""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ToolError(f"{call.name}: argument {name!r} must be a number of seconds, got {_kind(value)}")
    try:
        number = float(number)
    except OverflowError:  # an integer too large for a float: capped like any huge number
        number = MAX_TIMEOUT_S + 1
    if not math.isfinite(number) or number <= 0:
        raise ToolError(f"{call.name}: argument {name!r} must be a finite number of seconds > 0 (at most "
                        f"{MAX_TIMEOUT_S:g}), got {_kind(value)}")
    if number > MAX_TIMEOUT_S:
        return MAX_TIMEOUT_S, f"[timeout capped at {MAX_TIMEOUT_S:g} s]\n"
    return number, ""


def _path(box: Sandbox, call: ToolCall, name: str = "path") -> tuple[str, str]:
    """(the path as the agent wrote it, shown as view shows text; the absolute path in the sandbox)."""
    path = _text(call, name, command_line=True)
    if not path.strip():
        raise ToolError(f"{call.name}: argument {name!r} is empty; give a file path such as 'src/module.py'")
    return show(path), posixpath.join(box.config.workdir, path)


# ------------------------------------------------------------------------------------ showing and matching
_PRINTABLE_BMP = re.compile("[^\t\x20-\x7e]")  # fast path: pure printable ASCII needs no escaping
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|r)")


def show(text: str) -> str:
    """``text`` (decoded with surrogateescape) with what an observation cannot carry written as escapes.

    A byte that is not UTF-8 -> ``\\xNN`` (80-ff); C0 controls and DEL -> ``\\xNN`` (``\\r`` for CR; tab and
    newline stay); other non-printable characters -> ``\\uXXXX``; characters past U+FFFF -> ``\\UXXXXXXXX``.
    """
    if not _PRINTABLE_BMP.search(text):
        return text
    out = []
    for char in text:
        code = ord(char)
        if char in "\t\n" or (code <= 0xFFFF and char.isprintable()):
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code > 0xFFFF:
            out.append(f"\\U{code:08x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def unescape(text: str) -> str:
    """The inverse of :func:`show` for its escapes: ``\\xNN`` >= 80 becomes that raw byte (surrogateescape)."""
    def one(match: re.Match) -> str:
        escape = match.group(1)
        if escape == "r":
            return "\r"
        code = int(escape[1:], 16)
        if escape[0] == "x":
            return chr(0xDC00 + code) if code >= 0x80 else chr(code)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return match.group(0)
        return chr(code)

    return _ESCAPE.sub(one, text)


def _separator(text: str) -> str:
    """What ends a line of ``text``: ``\\n`` (LF and CRLF files), or ``\\r`` in a file with no ``\\n`` at all
    (classic Mac OS line endings)."""
    return "\r" if "\n" not in text and "\r" in text else "\n"


_REGEX_BUDGET = 50_000_000  # characters of text x of old_str a backtracking match may cost (~1 s)


def _spans(text: str, old: str) -> list[tuple[int, int]]:
    """Non-overlapping matches of ``old`` in ``text`` where each ``\\n`` of ``old`` matches any line ending.

    In linear time (``str.find`` on the text with every line ending written ``\\n``, positions mapped back): a
    regular expression of ``old``'s lines joined by ``(?:\\r\\n|\\n|\\r)`` backtracked ``len(text) x len(old)``
    (2 MB of ``a\\n`` lines and an ``old_str`` of 64 K that fails at its end: minutes of the host's CPU per
    call). Only an ``old_str`` holding a bare ``\\r`` (matched literally) takes that expression, within
    ``_REGEX_BUDGET``; past it a ToolError says what to do.
    """
    old = old.replace("\r\n", "\n")
    if "\r" in old:
        if len(text) * len(old) > _REGEX_BUDGET:
            raise ToolError("str_replace: old_str holds a bare \\r (matched as that character), which this file is too "
                            "large to search for; give old_str without it (a line's text up to the \\r) or edit "
                            "with bash (sed, python)")
        pattern = re.compile(r"(?:\r\n|\n|\r)".join(re.escape(part) for part in old.split("\n")))
        return [m.span() for m in pattern.finditer(text)]
    if "\r" not in text:
        plain, collapsed = text, []
    else:  # each CRLF becomes one "\n" (collapsed[k]: where the k-th lands), each bare CR a "\n" in place
        collapsed = [m.start() - k for k, m in enumerate(re.finditer("\r\n", text))]
        plain = text.replace("\r\n", "\n").replace("\r", "\n")

    def back(i: int) -> int:  # an index of ``plain`` -> of ``text``
        return i + bisect.bisect_left(collapsed, i) if collapsed else i

    spans, at = [], plain.find(old)
    while at >= 0:
        spans.append((back(at), back(at + len(old))))
        at = plain.find(old, at + len(old))
    return spans


def _line_ending(text: str, start: int, end: int) -> str:
    """The line ending new text at ``text[start:end]`` should use: ``\\r`` in a classic Mac OS file, else that of
    the replaced text, else of the line it is on, else the file's most frequent one (a bare ``\\r`` inside a
    line of an LF/CRLF file is data, not a line ending)."""
    if _separator(text) == "\r":
        return "\r"

    def style(part: str) -> str | None:
        crlf, newlines = part.count("\r\n"), part.count("\n")
        return None if not newlines else "\r\n" if 2 * crlf >= newlines else "\n"

    newline = text.find("\n", end)
    return (style(text[start:end]) or (("\r\n" if text[newline - 1] == "\r" else "\n") if newline > 0 else None)
            or style(text) or "\n")


@dataclass(kw_only=True, slots=True)
class Edit:
    """The result of :func:`replace_once`: the new bytes and how the match was made."""

    data: bytes
    start_line: int  # 1-based line of the replaced text's start
    new_lines: int  # lines the new text spans
    escapes: bool  # old_str/new_str were read with view's escapes
    line_ending: str


def replace_once(data: bytes, old: str, new: str, path: str = "the file") -> Edit:
    """Replace the unique match of ``old`` in ``data``; every byte outside the match is kept.

    Raises :class:`ToolError` (the agent's observation) when ``old`` is empty, absent or not unique.
    """
    if not old:
        raise ToolError("str_replace: old_str is empty; give the exact text to replace (use create for new files)")
    text = data.decode("utf-8", "surrogateescape")
    spans, escapes = _spans(text, old), False
    if not spans and unescape(old) != old:
        spans = _spans(text, unescape(old))
        if spans:
            escapes, new = True, unescape(new)
    if not spans:
        hint = (" Bytes that are not UTF-8 are written as \\xNN, as view shows them." if _SURROGATE.search(text)
                else "")
        raise ToolError(f"str_replace: old_str was not found in {path}; it must match exactly, including "
                        f"indentation and whitespace (view the file to copy the lines).{hint}")
    if len(spans) > 1:
        separator, lines, line, at = _separator(text), [], 1, 0
        for begin, _ in spans[:20]:  # counted on from the last (from 0 for each of 2 M matches: minutes)
            line, at = line + text.count(separator, at, begin), begin
            lines.append(line)
        shown = ", ".join(map(str, lines)) + (f" and {len(spans) - 20} more" if len(spans) > 20 else "")
        raise ToolError(f"str_replace: old_str occurs {len(spans)} times in {path} (lines {shown}); include more "
                        "surrounding lines so that it is unique")
    (start, end), = spans
    ending = _line_ending(text, start, end)
    body = new.replace("\r\n", "\n")
    if ending != "\n":
        body = body.replace("\n", ending)
    try:
        updated = (text[:start] + body + text[end:]).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as err:  # only a \uD800-style escape unescape() left alone could get here
        raise ToolError(f"str_replace: new_str cannot be written as UTF-8 ({err.reason}); write the character itself") from None
    return Edit(data=updated, start_line=text.count(_separator(text), 0, start) + 1, new_lines=new.count("\n") + 1,
                escapes=escapes, line_ending=ending)


def render(data: bytes, path: str, start: int | None = None, end: int | None = None, *,
           budget: int = 16_384) -> str:
    """What ``view`` shows of a file's bytes: numbered lines (1-based, inclusive range) and notes.

    ``budget`` (characters) bounds the numbered lines; the view stops early with a note past it.
    Raises :class:`ToolError` for a range outside the file.
    """
    if not data:
        return f"[{path} is empty (0 bytes)]"
    text = data.decode("utf-8", "surrogateescape")
    separator = _separator(text)
    lines = text.split(separator)
    final_newline = lines[-1] == ""
    if final_newline:
        lines.pop()
    crlf = [i for i, line in enumerate(lines[:len(lines) if final_newline else -1])
            if separator == "\n" and line.endswith("\r")]
    for i in crlf:
        lines[i] = lines[i][:-1]
    total = len(lines)
    first = 1 if start is None else start
    last = (total if start is not None else min(total, VIEW_MAX_LINES)) if end is None or end == -1 else end
    if not 1 <= first <= total or last < first or end is not None and end < -1:
        raise ToolError(f"view: line range {first}..{last if end is not None else 'end'} is outside {path}, which "
                        f"has {total} lines; use 1 <= start_line <= end_line <= {total} (end_line -1: to the end)")
    last = min(last, total)
    shown, size, escaped = [], 0, False
    for number in range(first, last + 1):
        line = lines[number - 1]
        visible = show(line[:VIEW_MAX_LINE_CHARS])
        escaped = escaped or visible != line[:VIEW_MAX_LINE_CHARS]
        if len(line) > VIEW_MAX_LINE_CHARS:
            visible += f" [... line cut: {len(line) - VIEW_MAX_LINE_CHARS} more characters; use bash (cut -c)]"
        row = f"{number:6d}\t{visible}"
        if shown and size + len(row) + 1 > budget:
            last = number - 1
            break
        shown.append(row)
        size += len(row) + 1
    notes = []
    invalid = len(_SURROGATE.findall(text))
    if invalid:
        notes.append(f"[{path} is not valid UTF-8: its {invalid} non-UTF-8 byte(s) are shown as \\xNN; write them "
                     "the same way in str_replace's old_str/new_str; every other byte is kept as it is]")
    if separator == "\r":
        notes.append(f"[{path} ends its lines with a bare \\r (classic Mac OS), not shown below; str_replace "
                     "matches old_str with plain \\n and writes \\r]")
    if crlf and len(crlf) == total - (0 if final_newline else 1):
        notes.append(f"[{path} has Windows line endings (\\r\\n), not shown below; str_replace matches old_str "
                     "with plain \\n and writes \\r\\n]")
    elif crlf:
        where = ", ".join(str(i + 1) for i in crlf[:20]) + (f" and {len(crlf) - 20} more" if len(crlf) > 20 else "")
        notes.append(f"[{path} mixes line endings: {len(crlf)} of {total} lines end with \\r\\n (lines {where}; the "
                     "\\r is not shown), the others with \\n; str_replace keeps the ending of the text it replaces]")
    if escaped:
        notes.append("[characters that cannot be shown as they are appear as escapes: \\xNN (control or non-UTF-8 "
                     "byte), \\r, \\uXXXX, \\UXXXXXXXX; str_replace accepts the same escapes]")
    tail = []
    if last == total and not final_newline:
        tail.append("[no newline at end of file]")
    if (first, last) != (1, total):
        more = f"; view start_line={last + 1} to continue" if last < total else ""
        tail.append(f"[{path}: lines {first}-{last} of {total}{more}]")
    return "\n".join([*notes, *shown, *tail])


# ----------------------------------------------------------------------------------- sandbox file access
_READ = f"""p=$LIGHTSWE_PATH
if [ -d "$p" ]; then echo D
elif [ ! -e "$p" ]; then echo N
elif [ ! -f "$p" ]; then echo O
elif [ ! -r "$p" ]; then echo R
else size=$(stat -L -c %s -- "$p") || exit 1; echo "F $size"
  if [ "$size" -le {MAX_FILE_BYTES} ]; then base64 -w0 -- "$p"; fi
fi"""
_LIST = f"""p=$LIGHTSWE_PATH
if [ ! -r "$p" ] || [ ! -x "$p" ]; then echo R; exit 0; fi
echo L
find -H "$p" -mindepth 1 -maxdepth 2 \\( -name .git -o -name __pycache__ \\) -prune -o \\
  \\( -type d -printf '%P/\\0' \\) -o -printf '%P\\0' 2>/dev/null | LC_ALL=C sort -z | head -z -n {DIR_MAX_ENTRIES + 1} \\
  | base64 -w0"""
_WRITE = """p=$LIGHTSWE_PATH
if [ "$LIGHTSWE_NEW" = 1 ]; then
  if [ -e "$p" ] || [ -L "$p" ]; then echo EXISTS; exit 3; fi
  d=$(dirname -- "$p" && echo .) && d=${d%??} && mkdir -p -- "$d" || exit 1
  mode=$(printf '%04o' $(( 0666 & ~0$(umask) )))
fi
# "&& echo ." then ${t%??}: command substitution would strip a newline that ends a file name
t=$(readlink -f -- "$p" && echo .) && t=${t%??} || exit 1
[ "$LIGHTSWE_NEW" = 1 ] || mode=$(stat -c %a -- "$t") || exit 1
# the bytes go to a temporary file beside the target, which then takes the target's place in one rename
# (create: one hard link, which fails if the name exists): a failed write leaves the old file whole
tmp=$t.lightswe-$LIGHTSWE_SUFFIX
if (set -C; : > "$tmp") 2>/dev/null; then
  { cat > "$tmp" && chmod "$mode" -- "$tmp"; } || { status=$?; rm -f -- "$tmp"; exit "$status"; }
  if [ "$LIGHTSWE_NEW" = 1 ]; then
    ln -T -- "$tmp" "$t" 2>/dev/null || { rm -f -- "$tmp"; echo EXISTS; exit 3; }
    rm -f -- "$tmp"
  else
    mv -f -T -- "$tmp" "$t" || { status=$?; rm -f -- "$tmp"; exit "$status"; }
  fi
  exit 0
fi
# a directory the agent may not add files to, holding a file it may write: in place
if [ "$LIGHTSWE_NEW" = 1 ]; then set -C; fi
cat > "$t"
"""
_CLEAN = 't=$(readlink -f -- "$LIGHTSWE_PATH" && echo .) && rm -f -- "${t%??}.lightswe-$LIGHTSWE_SUFFIX"'
_SEARCH = f"""p=$LIGHTSWE_PATH
if [ ! -e "$p" ]; then echo N; exit 0; fi
echo S
grep -rnIsH -D skip --exclude-dir=.git -e "$LIGHTSWE_PATTERN" -- "$p" 2>&1 | head -n {SEARCH_MAX_LINES + 1} | base64 -w0
status=("${{PIPESTATUS[@]}}"); echo; echo "${{status[0]}}\""""


def _exec(box: Sandbox, script: str, env: dict[str, str], *, stdin: bytes | None = None, timeout: float = 30):
    cap = MAX_FILE_BYTES * 4 // 3 + 4096  # base64 of the largest file read, plus a status line
    return box.exec(script, timeout=timeout, env=env, stdin=stdin, max_output_bytes=cap)


def _failed(tool: str, what: str, path: str, output: str) -> ToolError:
    return ToolError(f"{tool}: cannot {what} {path}: {show(output.strip()[-300:])}")


def _read(box: Sandbox, tool: str, path: str, target: str, *, directory_ok: bool = False) -> bytes | None:
    """The file's bytes (None for a directory when ``directory_ok``); ToolError saying why it cannot be read."""
    result = _exec(box, _READ, {"LIGHTSWE_PATH": target})
    kind, _, body = result.output.partition("\n")
    if kind == "D" and directory_ok:
        return None
    if kind == "D":
        raise ToolError(f"{tool}: {path} is a directory; give a file (list it with view)")
    if kind == "N":
        raise ToolError(f"{tool}: {path} does not exist; list a directory with view path='.' or search for a "
                        "name (create makes new files)")
    if kind == "O":
        raise ToolError(f"{tool}: {path} is not a regular file (a device, socket or pipe); use bash to inspect it")
    if kind == "R":
        raise ToolError(f"{tool}: {path} is not readable by the agent user (permission denied)")
    if not re.fullmatch(r"F \d+", kind) or result.exit_code != 0 or result.truncated:
        raise _failed(tool, "read", path, result.output)
    size = int(kind[2:])
    if size > MAX_FILE_BYTES:
        raise ToolError(f"{tool}: {path} has {size} bytes, more than the {MAX_FILE_BYTES} this tool reads; use "
                        "search, or bash with sed -n 'A,Bp' (and sed -i or python for edits)")
    data = _decode64(tool, "read", path, body)
    if len(data) != size:
        raise ToolError(f"{tool}: {path} changed while it was read ({size} bytes, then {len(data)}); try again")
    return data


def _decode64(tool: str, what: str, path: str, text: str) -> bytes:
    """The bytes of the one base64 line at the start of ``text`` (the sandbox may append a note after it)."""
    try:
        return base64.b64decode(text.lstrip("\n").split("\n", 1)[0], validate=True)
    except ValueError:  # binascii.Error: the command printed something else (e.g. it was killed)
        raise _failed(tool, what, path, text) from None


def _write(box: Sandbox, tool: str, path: str, target: str, data: bytes, *, new: bool) -> None:
    """Replace (or, ``new``, create) the file atomically: on any failure the old file is whole."""
    env = {"LIGHTSWE_PATH": target, "LIGHTSWE_NEW": "1" if new else "0", "LIGHTSWE_SUFFIX": uuid.uuid4().hex[:12]}
    result = _exec(box, _WRITE, env, stdin=data)
    if result.exit_code == 3 and result.output.startswith("EXISTS"):
        raise ToolError(f"create: {path} already exists; edit it with str_replace (or remove it with bash first)")
    if result.exit_code != 0:
        box.exec(_CLEAN, timeout=30, env=env)  # a write stopped from outside (disk limit) leaves no temporary
        if getattr(result, "disk_full", False):
            raise ToolError(f"{tool}: the sandbox's disk is full, so {path} was left as it was; free space with "
                            "bash (rm large files you made) and retry")
        raise _failed(tool, "write", path, result.output)


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{first + i:6d}\t{show(line.removesuffix(chr(13)))}" for i, line in enumerate(lines))


# ------------------------------------------------------------------------------------------------ tools
def bash(box: Sandbox, call: ToolCall) -> ToolResult:
    command = _text(call, "command", command_line=True)
    timeout, note = _seconds(call, "timeout", box.config.default_timeout)
    result = box.exec(command, timeout=timeout)
    text = result.output if result.output.endswith("\n") or not result.output else result.output + "\n"
    return ToolResult(output=f"{note}{text}[exit code {result.exit_code}]", exit_code=result.exit_code)


def view(box: Sandbox, call: ToolCall) -> ToolResult:
    path, target = _path(box, call)
    start, end = _whole(call, "start_line"), _whole(call, "end_line")
    if start is not None and start < 1:
        raise ToolError(f"view: start_line must be >= 1 (lines are numbered from 1), got {start}")
    if end is not None and end < -1:
        raise ToolError(f"view: end_line must be >= start_line, or -1 for the end of the file, got {end}")
    data = _read(box, "view", path, target, directory_ok=True)
    if data is None:
        return ToolResult(output=_listing(box, path, target))
    return ToolResult(output=render(data, path, start, end, budget=box.config.max_output_bytes))


def _listing(box: Sandbox, path: str, target: str) -> str:
    result = _exec(box, _LIST, {"LIGHTSWE_PATH": target})
    kind, _, body = result.output.partition("\n")
    if kind == "R":
        raise ToolError(f"view: the directory {path} is not readable by the agent user (permission denied)")
    if kind != "L":
        raise _failed("view", "list", path, result.output)
    names = [show(n.decode("utf-8", "surrogateescape")).replace("\n", "\\n")
             for n in _decode64("view", "list", path, body).split(b"\0") if n]
    more = f"\n[more than {DIR_MAX_ENTRIES} entries; view a subdirectory]" if len(names) > DIR_MAX_ENTRIES else ""
    head = f"[{path}: two levels deep, names relative to it; .git and __pycache__ are not listed]"
    return "\n".join([head, *names[:DIR_MAX_ENTRIES]]) + more if names else f"[{path} is an empty directory]"


def str_replace(box: Sandbox, call: ToolCall) -> ToolResult:
    path, target = _path(box, call)
    old, new = _text(call, "old_str"), _text(call, "new_str")
    edit = replace_once(_read(box, "str_replace", path, target), old, new, path)
    _write(box, "str_replace", path, target, edit.data, new=False)
    updated = edit.data.decode("utf-8", "surrogateescape")
    lines = updated.split(_separator(updated))
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    first = max(1, edit.start_line - 3)
    last = min(len(lines), edit.start_line + edit.new_lines - 1 + 3)
    notes = []
    if edit.escapes:
        notes.append("old_str and new_str were read with view's escapes (\\xNN as bytes)")
    if edit.line_ending != "\n" and "\n" in new:
        notes.append(f"new_str's lines were written with {edit.line_ending!r}, the line ending of the text replaced")
    note = f" ({'; '.join(notes)})" if notes else ""
    return ToolResult(output=f"Edited {path}{note}. The changed region now reads:\n"
                             f"{_numbered(lines[first - 1:last], first)}")


def create(box: Sandbox, call: ToolCall) -> ToolResult:
    path, target = _path(box, call)
    content = _text(call, "content")
    data = content.encode("utf-8")
    _write(box, "create", path, target, data, new=True)
    lines = content.count("\n") + (1 if content and not content.endswith("\n") else 0)
    return ToolResult(output=f"Created {path} ({len(data)} bytes, {lines} lines)")


def search(box: Sandbox, call: ToolCall) -> ToolResult:
    pattern = _text(call, "pattern", command_line=True)
    path = _text(call, "path", required=False, default=".", command_line=True) or "."
    if not pattern:
        raise ToolError("search: pattern is empty; give a basic regular expression such as 'def nth'")
    if "\n" in pattern or "\r" in pattern:
        raise ToolError("search: the pattern holds a line break, but grep matches one line at a time; search for "
                        "one line of the text (or use bash with grep -Pzo for multi-line patterns)")
    target = path if path.startswith("/") else posixpath.join(box.config.workdir, path)
    shown = show(path)
    result = _exec(box, _SEARCH, {"LIGHTSWE_PATH": target, "LIGHTSWE_PATTERN": pattern}, timeout=SEARCH_TIMEOUT_S)
    if result.timed_out:  # what was found so far is not all there is: never "no matches"
        raise ToolError(f"search: timed out after {SEARCH_TIMEOUT_S:g} s in {shown}; search a smaller directory "
                        "(or use bash with grep and a timeout)")
    kind, _, body = result.output.partition("\n")
    if kind == "N":
        raise ToolError(f"search: {shown} does not exist; search '.' (the repository) or a directory in it")
    encoded, _, status = body.partition("\n")
    if kind != "S":
        raise _failed("search", "search", shown, result.output)
    found = _decode64("search", "search", shown, encoded).decode("utf-8", "surrogateescape").split("\n")
    if found[-1] == "":
        found.pop()
    if status.strip() == "2" and found and found[0].startswith("grep: "):
        raise ToolError(f"search: grep rejected the pattern '{show(pattern)}': {show(found[0][6:])}; the pattern is a basic "
                        "regular expression (escape [ ] * . ^ $ \\ with a backslash to match them literally)")
    workdir = box.config.workdir.rstrip("/") + "/"
    rows = [show(line.removeprefix(workdir) if not path.startswith("/") else line) for line in found]
    rows = [row if len(row) <= SEARCH_MAX_LINE_CHARS else row[:SEARCH_MAX_LINE_CHARS] + " [... line cut]"
            for row in rows]
    if not rows:
        return ToolResult(output=f"no matches for '{show(pattern)}' in {shown}")
    note = (f"\n[more than {SEARCH_MAX_LINES} matches; narrow the pattern or the path]"
            if len(rows) > SEARCH_MAX_LINES else "")
    return ToolResult(output="\n".join(rows[:SEARCH_MAX_LINES]) + note)


def submit(box: Sandbox, call: ToolCall) -> ToolResult:
    return ToolResult(output="Submitted.", submitted=True)


TOOLS = {"bash": bash, "view": view, "str_replace": str_replace, "create": create, "search": search, "submit": submit}


def run_tool(box: Sandbox, call: ToolCall) -> ToolResult:
    """Run one call; raises ToolError (message for the agent) for unknown tools or bad arguments."""
    if not isinstance(call.name, str) or call.name not in TOOLS:
        raise ToolError(f"unknown tool {_kind(call.name) if not isinstance(call.name, str) else repr(call.name[:80])}; "
                        f"the tools are {', '.join(TOOL_NAMES)}")
    if not isinstance(call.arguments, dict):
        raise ToolError(f"{call.name}: arguments must be a JSON object, got {_kind(call.arguments)}")
    allowed = set(_schema(call.name)["parameters"]["properties"])
    extra = set(call.arguments) - allowed
    if extra:
        shown = sorted(repr(k)[:60] for k in extra)
        raise ToolError(f"{call.name}: unexpected argument(s) {', '.join(shown)}; it takes {sorted(allowed) or 'none'}")
    return TOOLS[call.name](box, call)
