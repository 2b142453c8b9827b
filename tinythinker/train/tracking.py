"""Training curves in an experiment tracker (``--report-to``): accelerate's TensorBoard, W&B and
trackio trackers, fed the same figures the trainers write to ``metrics.jsonl``.

``metrics.jsonl`` stays the run's record (reports draw from it); a tracker is a live view of it.
The tracker packages are optional: :func:`check_report_to` names the one to install before a run
starts, so a missing package never leaves a run folder behind. The trackers live in
``OUT/tracking`` (TensorBoard's event files, W&B's local files) of the run folder ``OUT``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Mapping

from tinythinker.errors import TinyThinkerError

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
TRACKING_DIR = "tracking"  # inside the run folder
PROJECT = "tinythinker"  # the W&B / trackio project, and TensorBoard's folder under OUT/tracking
# figures of a train line that go to the tracker (the rest are counts and timings of the log window)
TRAIN_FIGURES = ("loss", "lr", "tokens_per_second", "dpo_loss", "nll", "reward_margin", "reward_accuracy", "pairs_per_second")


def check_report_to(report_to: str | None) -> str | None:
    """The accelerate tracker name for ``--report-to`` (None for ``none``), after checking that its
    package imports: accelerate would silently drop a tracker whose package is missing."""
    if report_to in (None, "none"):
        return None
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "trackio": is_trackio_available}
    if report_to not in available:
        raise TinyThinkerError(f"--report-to {report_to}: choose one of {', '.join(REPORT_TO)}")
    if not available[report_to]():
        raise TinyThinkerError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to}")
    return report_to


def scalars(record: Mapping) -> dict[str, float]:
    """One ``metrics.jsonl`` line as tracker scalars: ``train/loss``, ``train/loss_<stage>`` (SFT's
    stages have losses of different sizes, so one stage's curve is easier to read alone),
    ``train/lr``, the DPO figures (``train/reward_margin``, ``train/reward_accuracy``, ...), and
    ``validation/accuracy``. Other lines (DPO iteration summaries) give nothing."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    kind = record.get("kind")
    if kind == "train":
        out = {f"train/{key}": float(record[key]) for key in TRAIN_FIGURES if number(record.get(key))}
        if record.get("stage") and number(record.get("loss")):
            out[f"train/loss_{record['stage']}"] = float(record["loss"])
        return out
    if kind == "eval" and number(record.get("accuracy")):
        return {"validation/accuracy": float(record["accuracy"])}
    return {}


def _hyperparameters(config: Mapping) -> dict:
    """Values every tracker stores as hyperparameters (TensorBoard takes only numbers, text and booleans)."""
    out = {}
    for key, value in config.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = "none" if value is None else value
        else:
            out[key] = json.dumps(value)
    return out


@contextlib.contextmanager
def tracking(accelerator, out: Path, config: Mapping) -> Iterator[None]:
    """Start the accelerator's tracker (if it has one) for the run in ``out`` with its hyperparameters
    (``config`` and the number of processes), and end it on the way out, errors and Ctrl-C included, so that its files are complete.

    A resumed run starts a new tracker run (TensorBoard: another events file in the same folder) and
    logs again the steps after its checkpoint; :func:`restart_at` makes TensorBoard show each step once."""
    if not accelerator.log_with:
        yield
        return
    name = Path(out).name
    kwargs = {"wandb": {"name": name, "dir": str(Path(out) / TRACKING_DIR)}, "trackio": {"name": name}}
    if accelerator.is_main_process:
        (Path(out) / TRACKING_DIR).mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(PROJECT, config=_hyperparameters({**config, "processes": accelerator.num_processes}),
                              init_kwargs=kwargs)
    try:
        yield
    finally:
        accelerator.end_training()


def restart_at(accelerator, step: int) -> None:
    """A resumed run logs again from ``step``: TensorBoard drops the events a stopped or killed run wrote
    at ``step`` or later (what ``SummaryWriter(purge_step=step)`` does, for the writer already open).
    TensorBoard purges on this marker only; a lower step arriving later is not enough."""
    if not accelerator.is_main_process:
        return
    for tracker in getattr(accelerator, "trackers", ()):
        if tracker.name == "tensorboard":
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            tracker.writer._get_file_writer().add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
