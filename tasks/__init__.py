"""lightswe.tasks: SWE-bench-format task instances from real repositories, made and checked offline.

- ``instance``: the TaskInstance record and JSONL I/O (SWE-bench files load as published);
- ``sources`` / ``images``: sdist or git source -> git repository -> environment and instance images;
- ``pool`` (+ ``data/pool.json``): the curated PyPI sdists, pinned by version and sha256, with test settings;
- ``mutate``, ``testrun``, ``statement``, ``synth``: the bug synthesizer (AST mutations as minimal edits,
  suites run in the sandbox with JUnit XML, symptom-only problem statements);
- ``validate``: every instance through ``lightswe/SWE-v0`` (no patch 0.0, gold patch 1.0);
- ``splits``, ``build``, ``prune``, ``cli``: ``lightswe tasks build|report|validate|prune|pool``;
- ``datasets``: ``load_tasks``, the one loader of every ``--tasks`` form; ``shipped``: the task sets in the
  package by name (``demo``, ``pool``, ``pool:train``, ``pool:test``).
"""

from lightswe.tasks.datasets import load_tasks

__all__ = ["load_tasks"]
