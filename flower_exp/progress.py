"""Terminal progress (rich): a bar over a training run's batches, and a sweep display with
trials done / total, the best score so far, the current trial's epoch and an ETA. Log lines
are printed by the run or sweep itself, so without a terminal nothing is lost."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def epoch_bar(console: Console) -> Any:
    """A Keras callback drawing the bar; call its ``close()`` when the run ends, however it ends."""
    from .callbacks import callback_base

    class EpochBar(callback_base()):
        def __init__(self):
            super().__init__()
            self.bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[scores]}"),
                console=console,
                transient=True,
            )
            self.task = None
            self.last_f1: float | None = None

        def on_train_begin(self, logs=None):
            self.bar.start()
            params = self.params or {}
            self.task = self.bar.add_task("train", total=params.get("steps"), epoch=1, epochs=params.get("epochs"), scores="")

        def on_epoch_begin(self, epoch, logs=None):
            self.bar.update(self.task, completed=0, epoch=epoch + 1)

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            scores = "" if loss is None else f"loss {float(loss):.4f}"
            if self.last_f1 is not None:
                scores += f"  last val_macro_f1 {self.last_f1:.4f}"
            self.bar.update(self.task, completed=batch + 1, scores=scores)

        def on_epoch_end(self, epoch, logs=None):
            self.last_f1 = (logs or {}).get("val_macro_f1", self.last_f1)

        def close(self) -> None:
            self.bar.stop()

    return EpochBar()


class SweepDisplay:
    """Renders ``run_sweep`` events; use as a context manager around the sweep."""

    def __init__(self, console: Console, total: int | None = None):
        self.bar = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("sweep", total=total, status="")
        self.best: float | None = None
        self.current = ""

    def __enter__(self) -> SweepDisplay:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "trial_start":
            self.current = f"trial {event['number']} starting"
        elif kind == "epoch":
            self.current = epoch_status(event)
        elif kind == "trial_end":
            self.best = event["best"] if event["best"] is not None else self.best
            self.current = ""
            self.bar.update(self.task, completed=event["done"], total=event["total"])
        best = "-" if self.best is None else f"{self.best:.4f}"
        self.bar.update(self.task, status=f"best {best}  {self.current}")


def epoch_status(event: dict, study_best: float | None = None) -> str:
    """``trial 3 epoch 5/15 (0.712, trial best 0.731)`` plus the study's best and the budget
    when known: the running trial's state in one line."""
    text = (
        f"trial {event['number']} epoch {event['epoch']}/{event['epochs']} "
        f"({event['value']:.3f}, trial best {event.get('trial_best', event['value']):.3f})"
    )
    if study_best is not None:
        text += f"  study best {study_best:.4f}"
    if "budget_left_s" in event:
        from .budget import fmt_s

        text += f"  budget {fmt_s(event['budget_used_s'])} used, {fmt_s(max(0.0, event['budget_left_s']))} left"
    return text


class QuietProgress:
    """The live line of ``sweep --quiet`` where no terminal redraws one (a log file, a batch
    job): the running trial's state, printed at most every ``every_s`` seconds, so a long trial
    still shows it is alive without a line per epoch."""

    def __init__(self, print_line, every_s: float = 60.0):
        import time

        self._print, self.every_s, self._clock = print_line, every_s, time.monotonic
        self._last = -float("inf")
        self.best: float | None = None

    def __call__(self, event: dict) -> None:
        if event["kind"] == "trial_end":
            self.best = event["best"] if event["best"] is not None else self.best
        elif event["kind"] == "epoch" and self._clock() - self._last >= self.every_s:
            self._last = self._clock()
            self._print(epoch_status(event, self.best))
