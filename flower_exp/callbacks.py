"""The Keras callbacks of a run: what happens at its epoch boundaries (and, for the NaN guard,
after each batch). Timing, the NaN guard, best-epoch keeping with early stopping, the budget's
stop, and per-epoch logging with the pruning hook; :mod:`flower_exp.train` builds them.

Importing this module imports TensorFlow (the classes derive from Keras' ``Callback``):
:mod:`flower_exp.progress` imports it lazily, and ``flower-exp --help`` never does.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .budget import Deadline
from .errors import NonFiniteLoss

# The metrics Logger logs every epoch (step = 1-based epoch), in history.csv's column order.
EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "epoch_time_s",
    "images_per_s",
    "trainable_params",
)
# How much longer than a frozen-backbone epoch the first fine-tuning epoch may take: a frozen
# epoch runs only the backbone's forward pass, and backpropagating through it costs about twice that.
_FINE_TUNE_COST = 3.0


def trainable_params(model) -> int:
    """How many parameters of ``model`` train now (the ``trainable_params`` epoch metric)."""
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def callback_base():
    """``keras.callbacks.Callback``, imported lazily (TensorFlow configured first)."""
    from ._imports import tensorflow

    tensorflow()  # configures TensorFlow logging before Keras imports it
    import keras

    return keras.callbacks.Callback


class EpochTimer(callback_base()):
    """Training time of each epoch (the validation pass excluded) and images/s."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.times: list[float] = []
        self._start = 0.0
        self._train_end: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        # fit's validation pass starts here: the epoch's training part is over.
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = (self._train_end or time.perf_counter()) - self._start
        self.times.append(elapsed)
        if logs is not None:
            logs["epoch_time_s"] = elapsed
            logs["images_per_s"] = self.images_per_epoch / elapsed if elapsed > 0 else 0.0


class StopOnNonFinite(callback_base()):
    """Fail the run the moment the loss is NaN/inf (TerminateOnNaN would end it quietly).

    Reading every step's loss adds no host-device sync: with the TensorFlow backend Keras 3
    converts each step's logs to Python floats itself (no async callback dispatch there);
    ``steps_per_execution`` is what makes those syncs rarer on an accelerator.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLoss(
                f"training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}; "
                "lower lr_max or check the data"
            )


class BestEpoch(callback_base()):
    """Keeps the best epoch by validation macro-F1 (weights and epoch in memory: one model,
    not one checkpoint per epoch) and stops early on it. The scores come from Keras' own
    validation pass (``val_loss``, ``val_accuracy``, the streaming ``val_macro_f1``)."""

    def __init__(self, patience: int, start_epoch: int):
        super().__init__()
        self.start_epoch = start_epoch
        self.patience = patience
        self.best_f1 = -1.0
        self.best_epoch = 0
        self._best_weights = None
        self._wait = 0

    def on_train_begin(self, logs=None):
        # Each phase is one fit call: patience counts from the phase's first epoch, because the
        # first fine-tuning epochs (a fresh optimizer, new layers training) are not comparable
        # with a frozen backbone's plateau. The best epoch and its weights carry over (the
        # weights list keeps its order whatever is trainable).
        self._wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_macro_f1" not in logs:
            return
        if not (math.isfinite(logs["val_loss"]) and math.isfinite(logs["val_macro_f1"])):
            raise NonFiniteLoss(f"validation loss became {logs['val_loss']} at epoch {epoch + 1}; lower lr_max")
        f1 = float(logs["val_macro_f1"])
        if f1 > self.best_f1:
            self.best_f1, self.best_epoch = f1, epoch + 1
            self._best_weights = self.model.get_weights()
            self._wait = 0
        else:
            self._wait += 1
            if self.patience and self._wait >= self.patience and epoch + 1 > self.start_epoch:
                self.model.stop_training = True

    def restore_best(self, model) -> None:
        """Set ``model``'s weights to the best epoch's (no-op before any validated epoch)."""
        if self._best_weights is not None:
            model.set_weights(self._best_weights)


class StopAtDeadline(callback_base()):
    """Ends training at the last epoch boundary that leaves time for one more epoch's worth
    of margin plus the finishing work (restore, score, save, log) before the deadline.

    An epoch is timed whole (training and validation pass); the next one is assumed to take as
    long as the slowest of the last two (the first epoch includes tracing, so it is
    pessimistic only until a second one exists). Without a measured reserve, finishing is
    assumed to take half an epoch (a prediction pass over validation plus saving) and 10 s.

    ``epochs``: the run's, across its phases (each phase's ``fit`` only knows its own end).
    ``fine_tune_from``: the 0-based first epoch of a fine-tuning phase after a frozen one,
    predicted to take up to :data:`_FINE_TUNE_COST` times the frozen epochs."""

    def __init__(self, deadline: Deadline, finish_reserve_s: float | None, epochs: int, fine_tune_from: int | None = None):
        super().__init__()
        self.deadline, self.finish_reserve_s = deadline, finish_reserve_s
        self.epochs, self.fine_tune_from = epochs, fine_tune_from
        self.stopped = False
        self._times: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self._times.append(time.time() - self._start)
        if epoch + 1 >= self.epochs:
            return  # the last epoch anyway: not a stop
        next_epoch = max(self._times[-2:])
        if epoch + 1 == self.fine_tune_from:
            next_epoch *= _FINE_TUNE_COST
        reserve = self.finish_reserve_s if self.finish_reserve_s is not None else 0.5 * next_epoch + 10.0
        if self.deadline.left_s() < next_epoch + reserve:
            self.stopped = True
            self.model.stop_training = True


class Logger(callback_base()):
    """Per-epoch metrics to MLflow (step = 1-based epoch), a progress line, the pruning hook."""

    def __init__(self, tracker, run_id, schedule, replicas, epochs, say, pruning_hook):
        super().__init__()
        self.tracker, self.run_id = tracker, run_id
        self.schedule, self.replicas, self.epochs = schedule, replicas, epochs
        self.say, self.pruning_hook = say, pruning_hook
        self.history: list[dict[str, float]] = []
        self._trainable = 0

    def on_train_begin(self, logs=None):
        # Once per phase (one fit call each): what trains changes only between phases.
        self._trainable = trainable_params(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {
            "epoch": epoch + 1,
            "train_loss": float(logs.get("loss", float("nan"))),
            "train_accuracy": float(logs.get("accuracy", float("nan"))),
            "lr": self.schedule.lr(epoch, self.replicas),
            "epoch_time_s": logs["epoch_time_s"],
            "images_per_s": logs["images_per_s"],
            "trainable_params": self._trainable,
        }
        # A refit trains on train+val and has no validation scores.
        row.update({k: logs[k] for k in ("val_loss", "val_accuracy", "val_macro_f1") if k in logs})
        self.history.append(row)
        self.tracker.log_metrics(self.run_id, {k: row[k] for k in EPOCH_METRICS if k in row}, step=epoch + 1)
        scores = f"loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.3f}  "
        if "val_macro_f1" in row:
            scores += (
                f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}  val_macro_f1 {row['val_macro_f1']:.4f}  "
            )
        self.say(
            f"epoch {epoch + 1}/{self.epochs}  {scores}lr {row['lr']:.2e}  "
            f"{row['epoch_time_s']:.1f}s ({row['images_per_s']:.0f} img/s)"
        )
        if self.pruning_hook is not None and "val_macro_f1" in row:
            self.pruning_hook(epoch + 1, row["val_macro_f1"])
