"""Adversarial episodes, seventh pass: a failing policy turning its 0.0 into "no score" (``sandbox_error``, reward
None, or an exception out of ``env.step``: the learner and eval drop the episode, a resume reruns it), through
tool calls only, for the whole episode. Real engine, the embedded demo task (toolz 1.0.0, off-by-one in ``nth``).

Broke before the fix:

- **a configuration file nested past the parser's recursion** (an exception out of ``step``: the episode was
  never written): a ``pyproject.toml`` anywhere in the change (``a = [[[...`` or ``{a = {a = ...`` a few
  thousand deep) made ``tomllib`` (recursive per nesting level) raise ``RecursionError`` out of ``grade`` ->
  a configuration file whose parse fails in any way is one whose runner sections cannot be separated: left out
  whole, said in ``left_out``, the rest of the change graded;
- **a graded diff larger than grading read** (no reward: ``GradingError``): each ``\\n`` of a new file is
  ``+\\n`` in the diff, so changed files within the 128 MiB grading applies (plus 3,000 empty files with long
  paths: a header each) made a 283 MB diff, past the 256 MiB ``read_file`` took -> the diff (information only)
  is cut in the grading container to the head that is kept (``MAX_PATCH_CHARS``) before it is read, and says
  its full size;
- **a sparse "packfile" in .git** (minutes to hours of grading): grading skips ``.git`` but the engine's archive
  streams it whole (4 GiB: 26 s here; 100 GiB: ~11 min) -> ``.git`` counts against the tree's byte and entry
  budgets (sixth pass): 0.0 at its header;
- **a hard link whose names are not UTF-8** (no reward: ``GradingError``): a file hard-linked under another
  name, read past the bytes grading keeps, is fetched again by name; a name that is not UTF-8 cannot travel
  through the engine's API (``requests`` refused it: ``UnicodeEncodeError`` -> ``SnapshotError``) -> the
  file is fetched through whichever of its names can travel, and left out (``left_out``: past the cap) when
  none can.

- **Python files the hack check parses on the grading host** (the host process's memory: an OOM kill or a
  ``MemoryError`` out of grading): ``ast.parse`` takes ~600 bytes per byte of dense source (4 MiB of ``x=1``
  lines: 2.4 GB, 16 s here) and grading applies files of 16 MiB, 128 MiB in all -> a file over
  ``MAX_CHECKED_BYTES`` (1 MiB), or past ``MAX_CHECKED_TOTAL`` (4 MiB) of the change's Python, is not parsed
  and is one finding (flagged: ``hack_policy="zero"`` makes it 0.0, like any file the checker cannot read);
- **string constants the hack check's patterns backtrack over** (hours of the grading host's CPU for one
  grade): ``\\w+_test\\.py`` unanchored (``"a" * n``), ``/proc/[^\\s]*cmdline`` (``"/proc/" * n``) and
  ``^\\s*test_`` across lines (``"\\n" * n``) are quadratic: 20,000 characters took 0.5-2 s, a 1 MiB constant
  hours -> each match starts once per word or line, or is bounded (``/proc/`` to ``cmdline``: 256 characters);
- **str_replace's match backtracking on the host** (the env's ``step`` held for minutes per call, each episode
  hours): ``old_str``'s lines joined by ``(?:\\r\\n|\\n|\\r)`` in a regular expression cost ``len(file) x
  len(old_str)`` when the match fails late (2 MB of ``a\\n`` lines, an ``old_str`` of 30,000 such lines and a
  ``b``: ~8 min) -> ``str.find`` on the file with every line ending written ``\\n``, positions mapped back
  (linear; a CRLF is one line ending, never two); only an ``old_str`` with a bare ``\\r`` keeps the
  expression, within a budget; and an ``old_str`` found 2,000,000 times counted each match's line from the
  file's start (202 KB, 200,000 matches: 12 s; 2 MB: ~20 min) -> the 20 lines shown are counted on from the last;
- **paths thousands of folders deep** (hours of the grading host's CPU): each new file's check for a shadowed
  module and for a file above it joined every prefix of its path anew (``O(depth x length)``: 28 ms a file
  1,400 folders deep, two hours for the 262,144 files a 4 GiB volume holds) -> each folder is answered once per
  grade (a cache), same answers;
- **search on a FIFO** (a dishonest observation, a minute late): ``search`` with ``path`` a FIFO (or
  ``/proc/self/fd/1``, grep's own output pipe) blocked grep until the 60 s timeout, then said "no matches" ->
  grep skips devices, FIFOs and sockets (``-D skip``, named or met in the walk), and a search that times out
  says so instead of reporting what it found so far as all.

Held (no change; each is an observation, and the fix made before it still grades 1.0): signalling the harness's
root runner or PID 1 (``kill -9``/``-STOP``: EPERM, the agent is not root); every pid taken by a ``setsid``
leftover; a ``setsid`` leftover holding most of the memory; ``/dev/shm`` filled; the command's stdout and stderr
closed; ``ulimit`` changes (per command shell); ``chmod 000 /testbed`` (the runner changes directory as root);
FIFOs and Unix sockets in /testbed (left out: not a regular file, or not archived); ``.git`` replaced by a link to
``/proc/self`` or a ``gitdir:`` file, a stale ``index.lock`` and an unreadable ``.git`` (grading never reads the
agent's ``.git``); files and folders of mode 000 (the engine archives as root); names that are not UTF-8, and
links to them.
"""

from __future__ import annotations

import re

import pytest
from lightswe.envs.agent_diff import read_tree
from lightswe.envs.sandbox import Sandbox, SandboxConfig
from lightswe.envs.tool_calls import ToolCall

from .conftest import FIX, bash, episode, left, start

pytestmark = pytest.mark.docker

DEEP_TOML = {  # tomllib recurses once per level: a few thousand levels pass Python's recursion limit
    "toolz/pyproject.toml": "a = " + "[" * 5000 + "]" * 5000 + "\n",
    "pyproject.toml": "[tool.black]\nx = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
}


def _write(path: str, text: str) -> str:
    """A bash command that writes ``text`` (ASCII, no quotes) to ``path``, from Python (no argument limit)."""
    return f"python3 -c \"import sys; open('{path}', 'w').write(sys.stdin.read())\" <<'EOF'\n{text}EOF"


@pytest.mark.parametrize("path", sorted(DEEP_TOML))
def test_a_configuration_file_nested_past_the_parsers_recursion_is_left_out(env, path):
    reward, info = episode(env, FIX, _write(path, DEEP_TOML[path]))
    assert reward == 1.0, info["reason"]
    assert "could not be separated" in left(info)[path]


def test_hard_links_whose_names_are_not_utf8_are_read_or_left_out():
    """read_tree past the bytes it keeps (``max_kept_bytes=0``): every changed file is read again by name."""
    with Sandbox(SandboxConfig(workdir="/tmp", labels={"lightswe.test": "attack7"})) as box:
        made = box.exec("mkdir w && cd w && printf one > $'a\\xff' && ln $'a\\xff' b && printf two > $'\\xfe' && "
                        "ln $'\\xfe' $'\\xff' && printf three > c && ln c d")
        assert made.exit_code == 0, made.output
        tree = read_tree(box.api, box.container_id, base={}, workdir="/tmp/w", max_kept_bytes=0)
    assert tree["b"].data == b"one"  # its first name is not UTF-8: read through the link's own name
    assert tree["d"].data == b"three"
    assert tree["\udcff"].data is None and tree["\udcff"].size == 3  # no name of it can travel: left out


@pytest.mark.parametrize("attack", [
    "for p in $(pgrep -u root); do kill -9 $p; kill -STOP $p; done; echo done",
    "setsid nohup bash -c 'while :; do sleep 1000 & done' >/dev/null 2>&1 & sleep 3; echo started",
    "setsid nohup python3 -c 'a = bytearray(1800 << 20); import time; time.sleep(1e6)' >/dev/null 2>&1 & "
    "sleep 3; echo started",
    "head -c 100M /dev/zero > /dev/shm/fill; exec 1>&- 2>&-; ulimit -Sn 3; sleep 1",
    "mkfifo fifo; python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('s')\"; rm -rf .git; "
    "ln -s /proc/self .git; chmod 000 toolz . /testbed",
])
def test_attacks_on_the_sandbox_are_observations_and_the_fix_still_grades(env, attack):
    """The attack, then three more tool calls (each an observation, never an exception or a restarted sandbox),
    then submit: the fix made first is graded 1.0 (not None, not a GradingError)."""
    start(env)
    env.step(bash(FIX))
    for action in (bash(attack), bash("echo next"), ToolCall(name="view", arguments={"path": "toolz/itertoolz.py"})):
        observation, reward, terminated, _, info = env.step(action)
        assert reward == 0.0 and not terminated and info.get("error") != "sandbox", observation
    _, reward, terminated, _, info = env.step(ToolCall(name="submit"))
    assert terminated and reward == 1.0, info["reason"]


@pytest.fixture(scope="module")
def unlimited_env(task):
    """The demo task in sandboxes without a disk limit (no RLIMIT_FSIZE: one sparse file may be 100 GiB)."""
    from lightswe.envs.swe_env import SWEEnv

    environment = SWEEnv([task], test_timeout=120, sandbox_config=SandboxConfig(disk_limit=None))
    yield environment
    environment.close()


def test_a_sparse_packfile_in_git_is_the_policys_failure_not_hours_of_reading(unlimited_env):
    """Grading never reads the agent's ``.git``, but the engine's archive of /testbed streams it whole: a sparse
    'packfile' of 100 GiB held the grading for ten minutes (a terabyte, hours). It counts like any file: 0.0 at its
    header, even with the fix in place."""
    import time

    began = time.perf_counter()
    reward, info = episode(unlimited_env, FIX, "truncate -s 100G .git/objects/pack/pack-0000.pack")
    assert reward == 0.0
    assert info["reason"].startswith("the work tree is too large to grade"), info["reason"]
    assert ".git/objects/pack/pack-0000.pack" in info["reason"]
    assert time.perf_counter() - began < 60


def test_git_counts_against_the_byte_and_entry_budgets_of_reading_a_tree():
    from lightswe.envs.agent_diff import TreeTooLarge

    with Sandbox(SandboxConfig(workdir="/tmp", labels={"lightswe.test": "attack7"})) as box:
        made = box.exec("mkdir -p t/.git u/.git/objects && truncate -s 1G t/.git/pack && touch t/a "
                        "u/a u/.git/objects/1 u/.git/objects/2", timeout=30)
        assert made.exit_code == 0, made.output
        with pytest.raises(TreeTooLarge, match="pack alone 1,073,741,824"):
            read_tree(box.api, box.container_id, base={}, workdir="/tmp/t", max_extra_bytes=64 * 1024 ** 2)
        with pytest.raises(TreeTooLarge, match="entries"):
            read_tree(box.api, box.container_id, base={}, workdir="/tmp/u", max_entries=3)
        assert sorted(read_tree(box.api, box.container_id, base={}, workdir="/tmp/u", max_entries=5)) == ["a"]


NEWLINES = "python3 -c \"open('{path}', 'w').write(chr(10) * {size})\""


def test_a_graded_diff_past_what_is_kept_is_cut_and_says_its_size(env):
    from lightswe.envs.grading import MAX_PATCH_CHARS

    reward, info = episode(env, FIX, NEWLINES.format(path="zz.txt", size=3 * 1024 * 1024))
    assert reward == 1.0, info["reason"]
    patch = info["model_patch"]
    assert "toolz/itertoolz.py" in patch and "+++ b/zz.txt" in patch
    size = int(re.search(r"\[graded diff truncated: (\d+) bytes in all\]\n$", patch).group(1))
    assert size > 6 * 1024 * 1024 and len(patch) < MAX_PATCH_CHARS + 100


@pytest.mark.slow
def test_a_graded_diff_of_hundreds_of_megabytes_is_not_the_machines_failure(env):
    """128 MiB of newlines (all the bytes grading applies) and 3,000 empty files 2.4 kB deep: a 283 MB diff."""
    make = ("python3 - <<'EOF'\nimport os\nfor i in range(1, 9):\n    with open(f'data{i}.txt', 'w') as f:\n"
            "        f.write(chr(10) * (16777216 - (65536 if i == 8 else 0)))\nd = 'p/' + ('x' * 200 + '/') * 12\n"
            "os.makedirs(d)\nfor i in range(3000):\n    open(d + f'{i:050d}', 'w').close()\nEOF")
    reward, info = episode(env, FIX, make)
    assert reward == 1.0, info["reason"]
    assert int(re.search(r"truncated: (\d+) bytes", info["model_patch"]).group(1)) > 256 * 1024 * 1024


def test_search_skips_fifos_and_says_when_it_timed_out(env, monkeypatch):
    import time

    from lightswe.envs import tools

    start(env)
    env.step(bash("mkfifo toolz/fifo && echo 'def nth_fifo(): pass' > toolz/zz.py"))
    began = time.perf_counter()
    for path in ("toolz/fifo", "/proc/self/fd/1", "toolz"):
        observation, _, _, _, info = env.step(ToolCall(name="search", arguments={"pattern": "nth_fifo", "path": path}))
        assert "error" not in info, observation
    assert observation == "toolz/zz.py:1:def nth_fifo(): pass"
    assert time.perf_counter() - began < 20
    monkeypatch.setattr(tools, "SEARCH_TIMEOUT_S", 0.2)
    observation, _, _, _, info = env.step(ToolCall(name="search", arguments={"pattern": "no such text zq9", "path": "/usr"}))
    assert info["error"] == "tool" and observation.startswith("search: timed out after 0.2 s in /usr"), observation


def test_python_too_large_to_parse_on_the_grading_host_is_one_finding_unparsed():
    from lightswe.envs.hack_check import MAX_CHECKED_BYTES, MAX_CHECKED_TOTAL, PAST_TOTAL, TOO_LARGE, suspicious_code

    dense = b"x = 1\n" * (MAX_CHECKED_BYTES // 6 + 1)  # what would take gigabytes to parse, a few times over
    assert suspicious_code([("pkg/big.py", b"import pytest\n" * 10, dense)]) == [f"pkg/big.py:0: {TOO_LARGE}"]
    near = b"y = '" + b"a" * (MAX_CHECKED_BYTES - 8) + b"'\n"  # one string: quick to parse
    files = [(f"pkg/m{i}.py", None, near) for i in range(MAX_CHECKED_TOTAL // len(near) + 1)]
    assert suspicious_code(files) == [f"{files[-1][0]}:0: {PAST_TOTAL}"]


def test_a_python_file_too_large_to_check_is_graded_and_flagged(env):
    reward, info = episode(env, FIX, NEWLINES.format(path="toolz/table.py", size=3 * 1024 * 1024))
    assert reward == 1.0, info["reason"]
    assert any(flag.startswith("toolz/table.py:0: cannot be checked: larger than") for flag in
               info["reward_hack_suspected"]), info["reward_hack_suspected"]


@pytest.mark.parametrize("unit", ["a", "a_", "1", "/proc/", "\n", "test_"])
def test_string_constants_the_patterns_could_backtrack_over_are_checked_in_linear_time(unit):
    """A constant of ~1 MiB (what the checker parses) of each shape: before the fix, hours each."""
    import time

    from lightswe.envs.hack_check import MAX_CHECKED_BYTES, suspicious_code

    text = unit * ((MAX_CHECKED_BYTES - 64) // len(unit))
    source = f'TABLE = """{text}"""\n'.encode()
    assert len(source) <= MAX_CHECKED_BYTES
    began = time.perf_counter()
    suspicious_code([("toolz/table.py", None, source)])
    assert time.perf_counter() - began < 60
    # the patterns still read what they are for
    assert suspicious_code([("toolz/a.py", None, b"P = '/proc/self/cmdline'\nT = 'toolz/x_test.py'\n")])


def test_str_replace_that_fails_late_in_a_large_file_answers_at_once(env):
    import time

    start(env)
    env.step(bash("yes a | head -c 2000000 > big.txt && printf 'x\\r\\ny\\r\\n' > crlf.txt"))
    began = time.perf_counter()
    old = "a\n" * 30_000 + "b"
    observation, _, _, _, info = env.step(ToolCall(name="str_replace", arguments={
        "path": "big.txt", "old_str": old, "new_str": "c"}))
    assert info["error"] == "tool" and "old_str was not found in big.txt" in observation, observation
    assert time.perf_counter() - began < 30  # was minutes of the host's CPU
    observation, _, _, _, info = env.step(ToolCall(name="str_replace", arguments={
        "path": "crlf.txt", "old_str": "x\ny", "new_str": "z\nw"}))
    assert "error" not in info, observation
    assert env.sandbox.read_file("crlf.txt") == b"z\r\nw\r\n"
    began = time.perf_counter()
    observation, _, _, _, info = env.step(ToolCall(name="str_replace", arguments={
        "path": "big.txt", "old_str": "a", "new_str": "c"}))
    assert "old_str occurs 1000000 times in big.txt (lines 1, 2, 3," in observation, observation
    assert time.perf_counter() - began < 30  # was ~20 min


def test_many_files_thousands_of_folders_deep_are_selected_in_linear_time(task):
    """3,000 new files 1,400 folders deep (the old per-prefix joins: 119 s here; now ~3 s), same answers."""
    import time

    from lightswe.envs.agent_diff import REGULAR, Change, Entry, blob_id
    from lightswe.envs.graded_files import select_changes, task_scope

    deep = "/".join(["d"] * 1400)
    paths = [f"{deep}/m{i}.py" for i in range(3000)] + ["os/__init__.py", "pkg/os.py", "toolz/x.py/y.py"]
    made = [Change(path=p, old=None, new=Entry(mode=REGULAR, sha=blob_id(b"x"), size=1, data=b"x")) for p in paths]
    base = {"toolz/x.py": Entry(mode=REGULAR, sha=blob_id(b""), size=0)}
    began = time.perf_counter()
    kept, left_out = select_changes(made, task_scope(task, {"os"}), base=base, tree_paths=set(paths) | set(base),
                                    read_base=lambda path: b"")
    assert time.perf_counter() - began < 40
    reasons = {x.path: x.reason for x in left_out}
    assert "os" in reasons["os/__init__.py"] and "os" in reasons["pkg/os.py"]  # would shadow the outside os
    assert "under toolz/x.py" in reasons["toolz/x.py/y.py"]
    assert len(kept) == 3000
