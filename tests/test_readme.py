"""Every ```python and ```bash block of README.md runs, as a reader would paste it, in a fresh directory.

Blocks are found when the tests are collected, so a block someone adds is tested without touching this file.
A block may be preceded (the line before its opening fence) by an HTML comment that the rendered README hides:

    <!-- readme-test: docker -->                 needs the Docker engine (skipped when none answers)
    <!-- readme-test: slow, timeout=3600 -->     runs only with `-m slow`; seconds before the block fails
    <!-- readme-test: gpu -->                    needs CUDA
    <!-- readme-test: skip: REASON -->           never run (the set-up commands themselves); the reason is shown

Python blocks run as a script with this interpreter; bash blocks run under ``bash -euo pipefail`` with this
interpreter first on PATH. Both start in an empty temporary directory (relative paths such as ``runs/r1`` land
there) with the caller's environment (``PYTHONPATH`` included). Other languages (``text``, ``json``...) and
unlabelled fences are output examples, not run. ``sh``/``shell``/``console`` count as bash.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->$")
DEFAULT_TIMEOUT_S = 600


@dataclass(kw_only=True)
class Snippet:
    line: int  # of the opening fence, 1-based
    language: str  # "python" or "bash"
    code: str
    section: str
    marks: set[str] = field(default_factory=set)
    skip: str | None = None
    timeout: int = DEFAULT_TIMEOUT_S

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")[:40] or "top"
        return f"L{self.line}-{self.language}-{slug}"


def parse_marker(body: str, where: str) -> tuple[set[str], str | None, int]:
    marks, skip, timeout = set(), None, DEFAULT_TIMEOUT_S
    if body.startswith("skip"):
        reason = body.removeprefix("skip").lstrip(" :").strip()
        if not reason:
            raise ValueError(f"{where}: `readme-test: skip` needs a reason, e.g. `skip: needs a cluster`")
        return marks, reason, timeout
    for part in filter(None, (p.strip() for p in body.split(","))):
        if part in ("docker", "slow", "gpu"):
            marks.add(part)
        elif part.startswith("timeout="):
            timeout = int(part.removeprefix("timeout="))
        else:
            raise ValueError(f"{where}: unknown readme-test marker {part!r}; expected docker, slow, gpu, "
                             "timeout=SECONDS or skip: REASON")
    return marks, skip, timeout


def snippets(text: str) -> list[Snippet]:
    """The runnable blocks of a Markdown text, with their markers (see the module docstring)."""
    found, section, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        fence = re.match(r"^(```+|~~~+)\s*([\w+-]*)", line)
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence.group(1)), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: a code block is never closed")
        language = LANGUAGES.get(fence.group(2).lower())
        if language:
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(before)
            marks, skip, timeout = (parse_marker(marker.group("body"), f"README.md:{i}") if marker
                                    else (set(), None, DEFAULT_TIMEOUT_S))
            found.append(Snippet(line=i + 1, language=language, code="\n".join(lines[i + 1:end]) + "\n",
                                 section=section, marks=marks, skip=skip, timeout=timeout))
        i = end + 1
    return found


def params() -> list:
    out = []
    for snippet in snippets(README.read_text(encoding="utf-8")):
        marks = [getattr(pytest.mark, name) for name in sorted(snippet.marks)]
        if snippet.skip:
            marks.append(pytest.mark.skip(reason=f"README.md:{snippet.line}: {snippet.skip}"))
        out.append(pytest.param(snippet, id=snippet.id, marks=marks))
    return out


@pytest.mark.parametrize("snippet", params())
def test_readme_snippet_runs(snippet: Snippet, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    if snippet.language == "python":
        script = tmp_path / "snippet.py"
        script.write_text(snippet.code)
        argv = [sys.executable, str(script)]
    else:
        script = tmp_path / "snippet.sh"
        script.write_text(snippet.code)
        argv = ["bash", "-euo", "pipefail", str(script)]
    work = tmp_path / "work"
    work.mkdir()
    try:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=snippet.timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"README.md:{snippet.line}: the block ran past {snippet.timeout} s "
                    f"(mark it `<!-- readme-test: slow, timeout=N -->` if that is expected)\n{err.stderr}")
    assert done.returncode == 0, (f"README.md:{snippet.line} ({snippet.language}) exited {done.returncode}\n"
                                  f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}")


def test_the_parser_on_every_kind_of_block():
    text = """# Top
```bash
echo plain
```
## Section two
<!-- readme-test: docker, slow, timeout=60 -->

```python
print(1)
```
<!-- readme-test: skip: needs a cluster -->
```sh
ray start
```
```text
output, not run
```
```
unlabelled, not run
```
"""
    found = snippets(text)
    assert [(s.line, s.language, s.section, s.marks, s.skip, s.timeout) for s in found] == [
        (2, "bash", "Top", set(), None, DEFAULT_TIMEOUT_S),
        (8, "python", "Section two", {"docker", "slow"}, None, 60),
        (12, "bash", "Section two", set(), "needs a cluster", DEFAULT_TIMEOUT_S),
    ]
    assert found[1].code == "print(1)\n" and found[0].id == "L2-bash-top"
    with pytest.raises(ValueError, match="unknown readme-test marker 'dockr'"):
        snippets("<!-- readme-test: dockr -->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        snippets("<!-- readme-test: skip -->\n```bash\ntrue\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        snippets("```bash\ntrue\n")


def test_the_readme_has_runnable_blocks():
    found = snippets(README.read_text(encoding="utf-8"))
    assert {s.language for s in found} == {"python", "bash"}
    assert sum(not s.skip for s in found) >= 5
