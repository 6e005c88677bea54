"""A static HTML viewer of a rollout directory: one page, no JavaScript, no server.

Each episode is a ``<details>`` block with its turns (role, text, parsed tool call, format errors), the test
outcomes and the timings; a summary table on top links to every episode.

Example::

    path = write_viewer("runs/r1")      # runs/r1/index.html
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path

from lightswe.agent.trajectory import Trajectory, read_trajectories
from lightswe.errors import UserInputError

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
.ok{color:#176f2c;font-weight:bold}.bad{color:#a4161a;font-weight:bold}
.turn{border-left:4px solid #999;margin:6px 0;padding:4px 10px;background:#fafafa}
.system{border-color:#6c757d}.user{border-color:#1d70b8}.assistant{border-color:#8f3fb5}.tool{border-color:#d97706}
pre{white-space:pre-wrap;word-break:break-all;margin:4px 0;max-height:40em;overflow:auto}
.call{background:#efe6f7;padding:2px 6px}.error{background:#fde2e1;padding:2px 6px}
summary{cursor:pointer;font-size:1.05em;margin:4px 0}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _anchor(t: Trajectory) -> str:
    return "ep-" + "".join(c if c.isalnum() else "-" for c in t.episode_id)


def _outcome(t: Trajectory) -> str:
    if not t.graded:
        return '<span class="bad">not graded</span>'
    css = "ok" if t.resolved else "bad"
    return f'<span class="{css}">reward {t.reward:g}</span>'


def _turn(t: Trajectory, i: int) -> str:
    m = t.messages[i]
    generated = sum(t.loss_mask[m.start:m.end])
    meta = f"tokens {m.start}-{m.end}" + (f", {generated} generated" if generated else "")
    if m.finish_reason:
        meta += f", finish: {m.finish_reason}"
    parts = [f'<div class="turn {_e(m.role)}" id="{_anchor(t)}-turn-{i}">',
             f"<b>{_e(m.role)}</b> <small>{_e(meta)}</small><pre>{_e(m.content)}</pre>"]
    if m.tool_call:
        parts.append(f'<div class="call">tool call <b>{_e(m.tool_call.get("name"))}</b> '
                     f'<code>{_e(json.dumps(m.tool_call.get("arguments", {}), ensure_ascii=False))}</code></div>')
    if m.format_error:
        parts.append(f'<div class="error">format error: {_e(m.format_error)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _tests(t: Trajectory) -> str:
    """Failing tests in full; passing ones folded (a suite has hundreds)."""
    if not t.tests:
        return ""

    def table(items) -> str:
        rows = "".join(f'<tr><td><code>{_e(name)}</code></td><td class="{"ok" if o == "passed" else "bad"}">'
                       f"{_e(o)}</td></tr>" for name, o in items)
        return f'<table class="tests"><tr><th>test</th><th>outcome</th></tr>{rows}</table>'

    failing = sorted((n, o) for n, o in t.tests.items() if o != "passed")
    passing = sorted((n, o) for n, o in t.tests.items() if o == "passed")
    return (f"<p>tests: {len(passing)} passed, {len(failing)} not passing</p>" + (table(failing) if failing else "")
            + (f"<details><summary>{len(passing)} passing tests</summary>{table(passing)}</details>" if passing else ""))


def _episode(t: Trajectory) -> str:
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in t.timings.items())
    return (f'<details id="{_anchor(t)}"><summary><b>{_e(t.episode_id)}</b> - {_outcome(t)} - '
            f"{_e(t.status.value)} - {t.num_steps} steps, {t.num_generated_tokens}/{len(t.token_ids)} tokens generated"
            f"</summary><p>task <code>{_e(t.task_id)}</code>, group <code>{_e(t.group_id)}</code>, policy "
            f"<code>{_e(t.policy)}</code>, format errors {t.num_format_errors}; {_e(timings)}"
            + (f'</p><p class="error">{_e(t.error)}' if t.error else "") + "</p>"
            + "".join(_turn(t, i) for i in range(len(t.messages))) + _tests(t) + "</details>")


def episode_folders(root: str | Path) -> list[Path]:
    """``root`` and every folder under it that holds stored episodes (``part-*`` segments), sorted; a train run's
    episodes sit in sub-folders (``rollouts/step-0001``, ``eval/step-0000``, ``warm_start/rollouts-0``).

    Raises:
        UserInputError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: {'is a file' if root.exists() else 'does not exist'}; expected a rollout "
                             f"or train folder")
    parts = {p.parent for pattern in ("part-*.jsonl", "part-*.parquet") for p in root.rglob(pattern)}
    return sorted(parts, key=lambda p: (len(p.relative_to(root).parts), str(p)))


def no_episodes(root: Path) -> UserInputError:
    return UserInputError(f"{root}: no episodes in it or its sub-folders (no part-*.jsonl or part-*.parquet); "
                          f"fix: point at a folder written by `lightswe rollout` or `lightswe train`")


def _table(episodes: list[Trajectory], key: str) -> str:
    graded = [t for t in episodes if t.graded]
    resolved = sum(t.resolved for t in graded)
    rows = "".join(
        f'<tr><td><a href="#{key}{_anchor(t)}">{_e(t.episode_id)}</a></td><td>{_outcome(t)}</td>'
        f"<td>{_e(t.status.value)}</td><td>{t.num_steps}</td><td>{t.num_format_errors}</td>"
        f"<td>{t.timings.get('total', 0.0):.1f}</td></tr>" for t in episodes)
    share = f" ({resolved / len(graded):.0%} of {len(graded)} graded)" if graded else ""
    return (f"<p class='summary'>{len(episodes)} episodes, {resolved} resolved{share}</p><table><tr><th>episode</th>"
            f"<th>outcome</th><th>status</th><th>steps</th><th>format errors</th><th>seconds</th></tr>{rows}</table>")


def render_html(trajectories: Iterable[Trajectory], *, title: str = "lightswe rollout",
                sections: dict[str, list[Trajectory]] | None = None) -> str:
    """One page: a summary table and every episode; with ``sections`` (folder name -> episodes), one block of
    each per folder (a train run's steps)."""
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{_e(title)}</h1>")
    if sections is None:
        episodes = sorted(trajectories, key=lambda t: (t.task_id, t.group_id, t.sample_index))
        body = _table(episodes, "").replace("class='summary'", "id='summary'", 1)
        return head + body + "".join(_episode(t) for t in episodes) + "</body></html>"
    body = []
    for i, (name, found) in enumerate(sections.items()):
        episodes = sorted(found, key=lambda t: (t.task_id, t.group_id, t.sample_index))
        key = f"s{i}-"
        body.append(f"<h2>{_e(name)}</h2>" + _table(episodes, key)
                    + "".join(_episode(t).replace(f'id="{_anchor(t)}', f'id="{key}{_anchor(t)}')
                              for t in episodes))
    return head + "".join(body) + "</body></html>"


def write_viewer(out_dir: str | Path, *, path: str | Path | None = None) -> Path:
    """Render every trajectory of ``out_dir`` and its sub-folders into ``path`` (default ``out_dir/index.html``).

    Raises:
        UserInputError: ``out_dir`` is missing or holds no episode.
    """
    out_dir = Path(out_dir)
    folders = episode_folders(out_dir)
    if not folders:
        raise no_episodes(out_dir)
    target = Path(path) if path else out_dir / "index.html"
    if folders == [out_dir]:
        text = render_html(read_trajectories(out_dir), title=f"lightswe rollout {out_dir.name}")
    else:
        sections = {str(f.relative_to(out_dir)) or ".": list(read_trajectories(f)) for f in folders}
        text = render_html([], title=f"lightswe run {out_dir.name}", sections=sections)
    target.parent.mkdir(parents=True, exist_ok=True)  # as --predictions: a new folder is made
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)  # a reader never sees half a page
    finally:
        tmp.unlink(missing_ok=True)
    return target
