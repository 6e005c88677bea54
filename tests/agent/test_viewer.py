"""The static viewer, loaded in a real headless Chromium (skipped when no chromium is installed)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from lightswe.agent.trajectory import EpisodeStatus, Message, Trajectory, TrajectoryWriter
from lightswe.agent.viewer import write_viewer

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def episode(i: int, resolved: bool) -> Trajectory:
    n = 30
    messages = [
        Message(role="user", content="Fix <script>alert(1)</script> in parse()", start=0, end=10),
        Message(role="assistant", content='<tool_calls>\n{"name": "bash"}\n</tool_calls>', start=10, end=20,
                tool_call={"name": "bash", "arguments": {"command": "pytest -x"}}, finish_reason="stop"),
        Message(role="tool", content="1 failed", start=20, end=25),
        Message(role="assistant", content="oops", start=25, end=30, format_error="no <tool_calls> block found",
                finish_reason="length")]
    return Trajectory(episode_id=f"pkg-{i}/g0/0", task_id=f"pkg-{i}", group_id="g0", sample_index=0,
                      token_ids=[65] * n, loss_mask=[0] * 10 + [1] * 10 + [0] * 10, logprobs=[0.0] * n,
                      reward=1.0 if resolved else 0.0, status=EpisodeStatus.SUBMITTED, messages=messages,
                      tests={"tests/test_a.py::test_parse": "passed" if resolved else "failed"}, num_steps=2,
                      num_format_errors=1, timings={"total": 3.0})


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_viewer_renders_in_headless_chromium(tmp_path):
    with TrajectoryWriter(tmp_path) as writer:
        writer.write(episode(0, True))
        writer.write(episode(1, False))
    page = write_viewer(tmp_path)
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = Collect()
    dom.feed(run.stdout)
    text = "".join(dom.text)
    assert "2 episodes, 1 resolved (50% of 2 graded)" in text
    ids = {a.get("id") for _, a in dom.tags}
    assert {"ep-pkg-0-g0-0", "ep-pkg-1-g0-0", "ep-pkg-0-g0-0-turn-3"} <= ids
    assert sum(tag == "details" for tag, _ in dom.tags) == 3  # two episodes + the folded passing tests of one
    assert "tests: 0 passed, 1 not passing" in text and "1 passing tests" in text
    assert "tests/test_a.py::test_parse" in text and '{"command": "pytest -x"}' in text
    assert "format error: no <tool_calls> block found" in text
    assert "<script>alert(1)</script>" in text  # shown as text ...
    assert not any(tag == "script" for tag, _ in dom.tags)  # ... never run as a script
    assert {a.get("class") for _, a in dom.tags} >= {"ok", "bad", "turn assistant", "turn tool", "call", "error"}
    shot = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={tmp_path / 'shot.png'}",
                           "--window-size=1200,900", page.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.returncode == 0 and (tmp_path / "shot.png").stat().st_size > 5000
