"""Training curves of a run: ``OUT/epochs.jsonl`` and, optionally, TensorBoard.

``epochs.jsonl`` has one JSON object per seed and epoch, appended (and flushed) as the epoch
ends::

    {"seed": 3, "task": 1, "epoch": 2, "loss": 0.0412, "train_acc": 0.991, "time": "..."}

and one per seed and task once the task has been evaluated::

    {"seed": 3, "task": 1, "test_acc": [0.998, null, ...], "task_il_acc": [...]}

Tasks and epochs count from 1, as everywhere people read them. A resumed run first drops the
lines of the tasks it is about to redo, so the file never holds one epoch twice. With
``--tensorboard DIR`` the same numbers go to ``DIR/seed_<s>`` through tensorboardX
(``pip install 'spacenet-jax[tensorboard]'``), the step being the epoch counted over the run.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

FILE_NAME = "epochs.jsonl"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _summary_writer_class() -> Any:
    """tensorboardX's ``SummaryWriter``, or an ``ImportError`` that says how to install it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "TensorBoard logging needs tensorboardX: pip install 'spacenet-jax[tensorboard]' "
            "(or pip install tensorboardX)"
        ) from err
    return SummaryWriter


class TrainingLog:
    """Writes the training curves of the seeds of one command.

    Args:
      out: the run's output folder (``None``: no ``epochs.jsonl``).
      tasks_done: per seed about to run, how many tasks it has already finished (resumed from
        a checkpoint; 0 for a fresh start): that seed's lines of later tasks are dropped.
        Lines of seeds not in it are kept.
      epochs: epochs per task (the TensorBoard step is ``task * epochs + epoch``).
      tensorboard: folder for TensorBoard event files, or ``None``.

    Raises:
      ImportError: ``tensorboard`` is given and tensorboardX is not installed (before any
        training).
    """

    def __init__(self, out: Path | None, tasks_done: dict[int, int], epochs: int,
                 tensorboard: Path | None = None) -> None:
        self.path = None if out is None else Path(out) / FILE_NAME
        self.epochs = epochs
        self._writers: dict[int, Any] = {}
        self._tensorboard = tensorboard
        self._writer_class = _summary_writer_class() if tensorboard is not None else None
        if self.path is not None:
            self._keep_finished(tasks_done)

    def _keep_finished(self, tasks_done: dict[int, int]) -> None:
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    seed, task = int(row["seed"]), int(row["task"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash
                if seed not in tasks_done or task <= tasks_done[seed]:
                    kept.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def _append(self, row: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def _writer(self, seed: int) -> Any:
        if seed not in self._writers:
            self._writers[seed] = self._writer_class(str(self._tensorboard / f"seed_{seed}"))
        return self._writers[seed]

    def epoch_end(self, seed: int, task: int, epoch: int, loss: float, accuracy: float) -> None:
        """An ``on_epoch_end`` of ``runner`` and ``study``: ``task`` and ``epoch`` 0-based."""
        seed, task, epoch = int(seed), int(task), int(epoch)
        self._append({"seed": seed, "task": task + 1, "epoch": epoch + 1, "loss": float(loss),
                      "train_acc": float(accuracy), "time": _now()})
        if self._tensorboard is not None:
            step = task * self.epochs + epoch + 1
            self._writer(seed).add_scalar("train/loss", loss, step)
            self._writer(seed).add_scalar("train/accuracy", accuracy, step)

    def task_end(self, seed: int, task: int, state: Any, record: dict[str, Any]) -> None:
        """An ``on_task_end`` of ``study.run_seeds``: after task ``task`` (0-based) of
        ``seed``, its test accuracies from ``record`` (``state`` is not used)."""
        seed, task = int(seed), int(task)
        row = record["acc_matrix"][-1]
        task_il = record.get("task_il_acc_matrix", [[None] * len(row)])[-1]
        self._append({"seed": seed, "task": task + 1, "test_acc": row, "task_il_acc": task_il,
                      "time": _now()})
        if self._tensorboard is not None:
            step = (task + 1) * self.epochs
            writer = self._writer(seed)
            seen = [a for a in row if a is not None]
            writer.add_scalar("test/average_accuracy", sum(seen) / len(seen), step)
            for j, acc in enumerate(row):
                if acc is not None:
                    writer.add_scalar(f"test/task_{j + 1}_accuracy", acc, step)
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
