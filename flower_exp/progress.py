"""Terminal progress for training: a bar over the current epoch's batches with the latest
loss and the last epoch's val_macro_f1 (rich). Per-epoch log lines are printed by the run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def epoch_bar(console: Console) -> Any:
    """A Keras callback drawing the bar; call its ``close()`` when the run ends, however it ends."""
    from .train import callback_base

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
