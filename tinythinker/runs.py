"""The folder of a training run (``train sft``, ``reflect`` and the DPO runs inside it): the one owner of its
layout, read by the trainers, the report and the study.

::

    OUT/run.json        the settings, written when the run starts, with its method ("sft" or "dpo")
    OUT/metrics.jsonl   one JSON row per logged step, validation and (self-reflection) iteration
    OUT/best/           the checkpoint with the best validation accuracy so far
    OUT/last/           the resume point (weights as safetensors, state as JSON)

Whether a saved run may be continued is one rule for every run (:func:`tinythinker.train.settings.first_change`).
"""

from __future__ import annotations

import json
from pathlib import Path

RUN_SETTINGS, METRICS, BEST, LAST = "run.json", "metrics.jsonl", "best", "last"
METHODS = ("sft", "dpo")


def read_settings(folder: str | Path) -> dict | None:
    """The settings a run wrote when it started; None when the folder has none (or they are unreadable)."""
    try:
        settings = json.loads((Path(folder) / RUN_SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def write_settings(folder: str | Path, record: dict, *, method: str) -> None:
    """Write ``OUT/run.json`` (in one rename): ``record`` with the run's method."""
    from tinythinker.artifacts import atomic_write_text

    assert method in METHODS, method
    atomic_write_text(Path(folder) / RUN_SETTINGS, json.dumps({**record, "method": method}, indent=2) + "\n")


def run_method(folder: str | Path) -> str | None:
    """``sft`` or ``dpo`` for a training run folder (one with settings and a metrics log), else None. Runs
    written before the method was recorded are told apart by their settings (DPO has iterations)."""
    settings = read_settings(folder)
    if settings is None or not (Path(folder) / METRICS).is_file():
        return None
    if settings.get("method") in METHODS:
        return settings["method"]
    return "dpo" if "iterations" in settings else "sft" if "interval" in settings else None
