"""A researcher's own data, as the README's "Bring your dataset" tells them to give it: rows copied from the shipped
instances (tasks/data), in every form and with SWE-bench's published field types, and each kind of bad input
they would give (a wrong type, an unreadable file, an empty slice, a split that is not there, a mirror that is
not a git repository or lacks the commit) answered with one line naming what was wrong and the fix."""

from __future__ import annotations

import datetime
import gzip
import json
import os
import subprocess
import sys

import pytest

from lightswe.tasks import sources
from lightswe.tasks.datasets import load_tasks
from lightswe.tasks.instance import TaskFormatError, write_jsonl
from lightswe.tasks.shipped import DEMO_FILE, POOL_FILE, data_path

from .histories import git, one_commit_repo

SWE_BENCH = ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement", "hints_text",
             "created_at", "version", "FAIL_TO_PASS", "PASS_TO_PASS", "environment_setup_commit")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """The shipped demo row and three pool rows, as lightswe writes them (lists, metadata dicts of other keys)."""
    with gzip.open(data_path(POOL_FILE), "rt", encoding="utf-8") as handle:
        pool = [json.loads(next(handle)) for _ in range(3)]
    return [json.loads(data_path(DEMO_FILE).read_text().splitlines()[0]), *pool]


def published(row: dict) -> dict:
    """The row as SWE-bench publishes it: its twelve fields only, FAIL_TO_PASS/PASS_TO_PASS as JSON text."""
    out = {key: row[key] for key in SWE_BENCH}
    out["FAIL_TO_PASS"], out["PASS_TO_PASS"] = json.dumps(row["FAIL_TO_PASS"]), json.dumps(row["PASS_TO_PASS"])
    return out


def test_lightswe_rows_round_trip_through_every_table_form(rows, tmp_path):
    """A struct column gives every row every metadata key (null-filled): the nulls are not new fields."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [t.to_dict() for t in load_tasks(tmp_path / "rows.jsonl")]
    assert expected[0]["metadata"] != expected[1]["metadata"]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    forms = [tmp_path / "rows.parquet"]
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    forms.append(tmp_path / "saved")
    for form in forms:
        loaded = [t.to_dict() for t in load_tasks(form)]
        assert loaded == expected, form
    write_jsonl(load_tasks(tmp_path / "rows.parquet"), tmp_path / "again.jsonl")
    assert [t.to_dict() for t in load_tasks(tmp_path / "again.jsonl")] == expected


def test_swe_bench_field_types_as_published_and_as_tables_store_them(rows, tmp_path):
    """Lists as JSON text or lists; ``version`` as text or a number; ``created_at`` as text or a timestamp."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = [published(r) for r in rows[1:]]  # the pool's rows (the demo has no created_at)
    (tmp_path / "pub.json").write_text(json.dumps(text))
    reference = [t.to_dict() for t in load_tasks(tmp_path / "pub.json")]
    assert reference[0]["FAIL_TO_PASS"] == rows[1]["FAIL_TO_PASS"] and reference[0]["version"] == rows[1]["version"]
    utc = datetime.timezone.utc
    typed = [{**r, "FAIL_TO_PASS": json.loads(r["FAIL_TO_PASS"]), "PASS_TO_PASS": json.loads(r["PASS_TO_PASS"]),
              "created_at": datetime.datetime.fromisoformat(r["created_at"].replace("Z", "+00:00")).astimezone(
                  datetime.timezone(datetime.timedelta(hours=2)))} for r in text]  # same instant, another zone
    pq.write_table(pa.Table.from_pylist(typed), tmp_path / "typed.parquet")
    assert pq.read_schema(tmp_path / "typed.parquet").field("created_at").type == pa.timestamp("us", tz="+02:00")
    assert [t.to_dict() for t in load_tasks(tmp_path / "typed.parquet")] == reference
    naive = [{**r, "created_at": r["created_at"].astimezone(utc).replace(tzinfo=None)} for r in typed]
    pq.write_table(pa.Table.from_pylist(naive), tmp_path / "naive.parquet")  # naive: read as UTC, as SWE-bench's
    assert [t.to_dict() for t in load_tasks(tmp_path / "naive.parquet")] == reference
    numbers = [{**r, "version": 1.1, "python_version": 3.9} for r in text]
    (tmp_path / "numbers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in numbers))
    task = load_tasks(tmp_path / "numbers.jsonl")[0]
    assert (task.version, task.python_version) == ("1.1", "3.9")
    write_jsonl([task], tmp_path / "numbers_out.jsonl")  # a timestamp or number never reaches the JSON writer


@pytest.mark.parametrize("field,value,says", [
    ("created_at", 1700000000, "'created_at' must be a string, got int 1700000000; fix: ISO 8601 text"),
    ("environment_setup_commit", 12, "'environment_setup_commit' must be a string, got int"),
    ("install_command", ["pip install ."], "'install_command' must be a string, got list"),
    ("version", [1, 0], "'version' must be a string, got list"),
    ("version", True, "'version' must be a string, got bool"),
    ("metadata", "not an object", "'metadata' must be an object"),
    ("instance_id", 7, "'instance_id' must be a string, got int"),
    ("FAIL_TO_PASS", 5, "'FAIL_TO_PASS' must be a list of test ids, got 5; fix:"),
    ("PASS_TO_PASS", "tests/test_a.py::test_b", "'PASS_TO_PASS' is not a JSON list"),
    ("patch", None, "missing field(s) ['patch']; fix: add them"),
    ("base_commit", None, "missing field(s) ['base_commit']"),  # with an image_name: not taken for SWE-smith
], ids=lambda v: str(v)[:20])
def test_a_wrong_type_or_missing_field_is_one_line_naming_the_row_and_the_fix(rows, tmp_path, field, value, says):
    bad = {**rows[1], field: value, "image_name": "sweb.eval.x86_64.pytoolz__toolz-1"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TaskFormatError) as err:
        load_tasks(tmp_path / "bad.jsonl")
    message = str(err.value)
    assert says in message and f"{tmp_path / 'bad.jsonl'}:2" in message and "\n" not in message, message
    assert "fix:" in message


def lightswe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightswe", *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def test_bad_files_slices_and_splits_are_one_line_with_exit_2(rows, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "junk.parquet").write_text("id,repo\n1,x\n")  # a CSV under a .parquet name
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), tmp_path / "schema.parquet")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "twice.json").write_text(json.dumps([rows[0], rows[1], rows[0]]))
    code = ("import sys\nfrom lightswe.tasks.datasets import load_tasks\nfrom lightswe.errors import UserInputError\n"
            "for spec in sys.argv[1:]:\n    try:\n        load_tasks(spec)\n        print('LOADED', spec)\n"
            "    except UserInputError as err:\n        print(str(err).replace(chr(10), '<NL>'))\n")
    specs = [f"{tmp_path / 'rows.jsonl'}[4:9]", f"{tmp_path / 'rows.jsonl'}[2:1]", str(tmp_path / "junk.parquet"),
             str(tmp_path / "schema.parquet"), str(tmp_path / "empty.jsonl"), str(tmp_path / "twice.json")]
    run = subprocess.run([sys.executable, "-c", code, *specs], capture_output=True, text=True, timeout=120)
    lines = run.stdout.splitlines()
    assert len(lines) == 6 and not any("<NL>" in line or line.startswith("LOADED") for line in lines), run.stdout
    assert "the slice [4:9] selects none of the 4 rows" in lines[0] and "fix: a slice within [0:4]" in lines[0]
    assert "the slice [2:1] selects none" in lines[1]
    assert "junk.parquet: not a readable Parquet file" in lines[2] and "fix:" in lines[2]
    assert "schema.parquet row 0: missing field(s)" in lines[3]
    assert "empty.jsonl: no task instances (an empty file or split); fix:" in lines[4]
    assert f"twice.json[2]: instance_id {rows[0]['instance_id']!r} appears twice (first at " in lines[5]
    assert all("fix:" in line for line in lines), lines
    shown = lightswe("tasks", "show", str(tmp_path / "junk.parquet"))
    assert shown.returncode == 2 and len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert "Traceback" not in shown.stderr and "not a readable Parquet file" in shown.stderr


SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def test_a_hub_snapshot_by_name_with_and_without_a_split_offline(rows, tmp_path):
    """What `huggingface-cli download --repo-type dataset NAME` leaves in HF_HOME/hub (no `datasets` cache)."""
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "hf" / "hub" / "datasets--someone--SWE-mini"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    (repo / "snapshots" / SNAPSHOT / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([published(r) for r in rows]),
                   repo / "snapshots" / SNAPSHOT / "data" / "test-00000-of-00001.parquet")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    ids = [r["instance_id"] for r in rows]
    for spec, expected in (("someone/SWE-mini:test[1:3]", ids[1:3]), ("someone/SWE-mini", ids)):
        shown = lightswe("tasks", "show", spec, env=env)
        assert shown.returncode == 0, shown.stderr
        assert [json.loads(line)["instance_id"] for line in shown.stdout.splitlines()] == expected
    wrong = lightswe("tasks", "show", "someone/SWE-mini:train", env=env)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1].endswith(
        "dataset 'someone/SWE-mini' has no split 'train'; fix: one of its splits, someone/SWE-mini:test"), wrong.stderr


def test_write_jsonl_leaves_the_old_file_and_no_temporary_on_failure(rows, tmp_path):
    tasks = load_tasks(f"{data_path(DEMO_FILE)}")
    out = tmp_path / "tasks.jsonl"
    write_jsonl(tasks, out)
    before = out.read_bytes()
    tasks[0].metadata["when"] = datetime.datetime(2025, 1, 1)  # not JSON
    with pytest.raises(TypeError):
        write_jsonl(tasks, out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["tasks.jsonl"]


def test_a_mirror_that_is_missing_not_git_or_without_the_commit_says_so(tmp_path, monkeypatch):
    """A relative mirror path is the same source as its absolute path; each bad mirror is one line with the fix."""
    work = tmp_path / "work"
    head = one_commit_repo(work, {"a.py": "x = 1\n"})
    subprocess.run(["git", "clone", "-q", "--mirror", str(work), str(tmp_path / "mirror.git")], check=True)
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    assert sources.git_repo("mirror.git", head) == sources.git_repo(str(tmp_path / "mirror.git"), head)
    (tmp_path / "plain").mkdir()
    cases = [("nowhere", head, "source nowhere: no such directory; fix:"),
             ("plain", head, "source plain: not a git repository"),
             ("mirror.git", "f" * 40, f"commit '{'f' * 40}' is not in {tmp_path / 'mirror.git'}")]
    for url, commit, says in cases:
        with pytest.raises(sources.SourceError) as err:
            sources.git_repo(url, commit)
        message = str(err.value)
        assert says in message and "fix:" in message and "\n" not in message, message
    assert len(list((tmp_path / "cache" / "git").glob("mirror-*"))) == 1  # one clone for both spellings


def test_a_slice_after_a_file_passes_every_command_s_check(rows, tmp_path):
    """`tasks validate`, `rollout`/`eval`/`train --tasks` and the env's CLI check the spec before loading it."""
    from lightswe.tasks.datasets import looks_like_dataset
    from lightswe.tasks.validate_args import ValidateArgs
    from lightswe.errors import UserInputError

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sliced = f"{tmp_path / 'rows.jsonl'}[1:3]"
    assert looks_like_dataset(sliced) and ValidateArgs(file=sliced).file == sliced
    assert not looks_like_dataset(f"{tmp_path / 'nothere.jsonl'}[1:3]")
    with pytest.raises(UserInputError, match="does not exist; fix:"):
        ValidateArgs(file=f"{tmp_path / 'nothere.jsonl'}[1:3]")
    from lightswe.agent.task_stream import check_spec

    check_spec(sliced)  # rollout, eval and train --tasks


def test_a_swe_smith_row_without_an_image_is_built_from_its_mirror(tmp_path, monkeypatch):
    """No ``image_name``: the base (source commit + the bug) is replayed from the row's ``source`` mirror."""
    work = tmp_path / "work"
    clean = one_commit_repo(work, {"m.py": "def f(x):\n    return x + 1\n"})
    (work / "m.py").write_text("def f(x):\n    return x - 1\n")
    bug = git(work, "diff")
    git(work, "checkout", "-q", "m.py")
    row = {"instance_id": f"owner__proj.{clean[:7]}.op_swap", "repo": f"swesmith/owner__proj.{clean[:7]}",
           "patch": bug, "FAIL_TO_PASS": ["tests/test_m.py::test_f"], "problem_statement": "f is off",
           "source": str(work)}
    (tmp_path / "smith.json").write_text(json.dumps([row]))
    [task] = load_tasks(tmp_path / "smith.json")
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    base = sources.base_repo(task)
    assert sources.read_blob(base, "m.py") == b"def f(x):\n    return x - 1\n"
    assert git(base.path, "rev-parse", f"{base.commit}~1").strip() == clean
