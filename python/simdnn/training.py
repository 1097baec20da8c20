"""Training loop: fit, evaluate, predict, and callbacks.

``fit`` runs mini-batch gradient descent: for each batch, forward through the model and the
loss (which records the tape), ``backward()`` from the loss (reverse-mode automatic
differentiation), then one optimiser step: the PyTorch loop, written once. It records per
epoch the loss, the accuracy (for classification losses), the validation figures and each
layer's gradient norm, which is how the vanishing-gradient problem shows itself
(``python -m simdnn vanishing``).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import distributed as _distributed
from . import init
from .autograd import as_array
from .nn.losses import Loss
from .nn.module import Module, Parameter, inference_mode
from .optim import Optimizer


class History(dict):
    """Per-epoch figures of a fit, as lists keyed by name (Keras-style):

    - ``loss``, ``accuracy``: training averages over the epoch's batches
    - ``val_loss``, ``val_accuracy``: on validation_data, when given
    - ``grad_norms``: one dict per epoch, layer name -> mean L2 norm of its weight gradient
    - ``epoch_time``: seconds per epoch

    ``stop_reason`` says why training ended early (early stopping, a non-finite loss), or None.
    """

    def __init__(self) -> None:
        super().__init__(loss=[], accuracy=[], val_loss=[], val_accuracy=[], grad_norms=[])
        self["epoch_time"] = []
        self.stop_reason: str | None = None

    @property
    def epochs(self) -> int:
        return len(self["loss"])


class Callback:
    """Hooks into fit. ``on_epoch_end`` returns True to stop training."""

    def on_train_begin(self, model: Module) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: Module) -> bool:
        return False

    def on_train_end(self, model: Module) -> None:
        """Called once after the last epoch."""


class EarlyStopping(Callback):
    """Stop when a monitored figure has not improved for `patience` epochs.

    monitor: a History key ("val_loss" by default; "loss", "val_accuracy", ...). Losses must go
    down and accuracies up (mode "auto"), by more than min_delta to count as better.
    restore_best_weights: put back the weights of the best epoch at the end.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
    ) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.higher_is_better = mode == "max" or (mode == "auto" and "acc" in monitor)
        self.restore_best_weights = restore_best_weights
        self.best: float | None = None
        self.best_epoch = -1
        self.stopped_epoch: int | None = None
        self._best_state: dict[str, np.ndarray] | None = None
        self._wait = 0

    def on_train_begin(self, model: Module) -> None:
        self.best, self.best_epoch, self.stopped_epoch = None, -1, None
        self._best_state, self._wait = None, 0

    def _improved(self, value: float) -> bool:
        # A non-finite figure (a diverged epoch) is worse than any finite one, and never becomes
        # the best: otherwise a NaN first val_loss would make every later epoch "no better".
        if not math.isfinite(value):
            warnings.warn(
                f"EarlyStopping: {self.monitor} is {value}; counted as no improvement",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        if self.best is None:
            return True
        if self.higher_is_better:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: Module) -> bool:
        if self.monitor not in logs:
            raise ValueError(
                f"EarlyStopping: {self.monitor!r} is not recorded (have {sorted(logs)}); "
                "monitoring a validation figure needs validation_data"
            )
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_state = model.state_dict()
            return False
        self._wait += 1
        if self._wait > self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model: Module) -> None:
        if self.restore_best_weights and self._best_state is not None:
            model.load_state_dict(self._best_state)


def _check_x(x: Any, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: x must be a NumPy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiub":
        raise TypeError(
            f"{what}: x must hold real numbers (float, int, uint or bool), got dtype {x.dtype}"
        )
    if x.ndim == 0:
        raise ValueError(f"{what}: x must have a batch axis, got a 0-d array")
    return x


def _check_data(x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = _check_x(x, what)
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise TypeError(
            f"{what}: y must hold real numbers (class indices or targets), got dtype {y.dtype}"
        )
    if y.ndim == 0:
        raise ValueError(f"{what}: y must have a batch axis, got a 0-d array")
    if len(x) != len(y):
        raise ValueError(f"{what}: x has {len(x)} examples but y has {len(y)}; they must match")
    return x, y


def _check_batch_size(batch_size: Any, what: str) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"{what}: batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"{what}: batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


def _check_model_dtype(model: Module, what: str) -> None:
    """Every parameter in one dtype, the first's; else a TypeError naming the first layer that
    differs (by its path in the model) and both dtypes. Without it a mixed model fails deep in
    a forward, naming only a class, which in a model of several Linear layers says little."""
    want: np.dtype | None = None
    first = ""
    for name, mod in model.named_modules():
        for pname, p in mod._params.items():
            full = f"{name}.{pname}" if name else pname
            if want is None:
                want, first = p.dtype, full
            elif p.dtype != want:
                where = f"layer {name!r}" if name else "the model"
                raise TypeError(
                    f"{what}: {where} ({type(mod).__name__}) has {p.dtype} parameters but the "
                    f"model's first parameter ({first!r}) is {want}; convert the model with "
                    f"model.astype({str(want)!r}) so that they match"
                )


def _cast(x: np.ndarray, model: Module) -> np.ndarray:
    """Inputs in the model's dtype (integer images, float64 arrays for a float32 model...)."""
    dt = model.dtype
    return x if x.dtype == dt else x.astype(dt)


def _weight_layers(model: Module) -> list[tuple[str, Parameter]]:
    """(layer name, weight) of every layer that has a weight, in order."""
    out = []
    for name, mod in model.named_modules():
        w = mod._params.get("weight")
        if w is not None:
            out.append((f"{name} {type(mod).__name__}".strip(), w))
    return out


def fit(
    model: Module,
    loss: Loss,
    optimizer: Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int = 1,
    batch_size: int = 32,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    distributed: bool = False,
) -> History:
    """Train `model` on (x, y) for `epochs` epochs of mini-batches; returns a History.

    seed: shuffling seed (default: simdnn's generator, see simdnn.seed). A loss that becomes
    NaN or infinite stops training with a RuntimeWarning naming the epoch and batch; the weights,
    buffers (BatchNorm's running statistics) and optimiser state from before the step that
    produced it are restored.

    distributed: data-parallel training on every rank of an MPI job (``mpiexec -n 4 python
    train.py``; see :mod:`simdnn.distributed`). batch_size is the global batch: each rank takes
    its share of every batch, the gradients are averaged weighted by the shares, and every rank
    ends with the weights one process would reach (up to float rounding). Every rank must call
    fit with the same data; rank 0's weights, buffers and optimiser state are broadcast first,
    only rank 0 shows a progress bar and warns, validation is split across the ranks. BatchNorm
    normalises with each rank's own batch statistics (so a BatchNorm model's weights are not
    one process's), and its running statistics are averaged over the ranks after every epoch.
    """
    x, y = _check_data(x, y, "fit")
    batch_size = _check_batch_size(batch_size, "fit")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)):
        raise TypeError(f"fit: epochs must be an int, got {epochs!r}")
    if epochs < 0:
        raise ValueError(f"fit: epochs must be an int >= 0, got {epochs}")
    if validation_data is not None:
        vx, vy = _check_data(*validation_data, "fit: validation_data")
        # A mean over no examples would be recorded as a val_loss of 0, which EarlyStopping
        # would keep as the best figure ever seen.
        if len(vx) == 0:
            raise ValueError("fit: validation_data has 0 examples; there is nothing to validate on")
    if len(x) == 0:
        raise ValueError("fit: x has 0 examples; there is nothing to train on")
    _check_model_dtype(model, "fit")
    # distributed: join the job, check every rank runs the same fit, broadcast rank 0's state
    dist = None
    if not isinstance(distributed, (bool, np.bool_)):
        raise TypeError(f"fit: distributed must be True or False, got {distributed!r}")
    if distributed:
        dist = _distributed._start_fit(
            model,
            optimizer,
            n=len(x),
            batch_size=batch_size,
            epochs=epochs,
            shuffle=shuffle,
            seed=seed,
            validation_n=None if validation_data is None else len(vx),
        )
    rng = init.generator() if seed is None else np.random.default_rng(seed)
    history = History()
    weights = _weight_layers(model)
    params = model.parameters()
    # The weights, the buffers (BatchNorm's running statistics, which the diverging forward has
    # already updated) and the optimiser's state from before the last step, put back when a
    # loss turns non-finite (the last step made the weights that produced it). Buffers are
    # looked up by owner and name each time, in case a layer replaces one rather than
    # updating it in place.
    snapshot = [p.data.copy() for p in params]
    buffers = [
        (mod, name)
        for _, mod in model.named_modules()
        for name, b in mod._buffers.items()
        if b is not None
    ]
    buf_saved = [mod._buffers[name].copy() for mod, name in buffers]
    opt_snapshot = optimizer._state_arrays()
    opt_saved = [a.copy() for a in opt_snapshot]
    opt_step = optimizer._step_count()
    n = len(x)
    steps = math.ceil(n / batch_size)
    for cb in callbacks:
        cb.on_train_begin(model)
    bar_cls = None
    if progress and (dist is None or dist.is_main):  # distributed: the bar on rank 0 only
        from tqdm.auto import tqdm

        bar_cls = tqdm
    stop = False
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n) if shuffle else np.arange(n)
        if dist is not None:  # distributed: rank 0's order when fit has no seed
            order = dist.order(order)
        total_loss, total_correct, seen = 0.0, 0.0, 0
        norms = np.zeros(len(weights))
        has_acc = False
        bar = (
            bar_cls(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=True, file=sys.stderr)
            if bar_cls is not None
            else None
        )
        # Overflow on the way to a non-finite loss is reported below with the epoch and batch;
        # NumPy's floating-point warnings would only repeat it without them.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for b in range(steps):
                idx = order[b * batch_size : (b + 1) * batch_size]
                k = len(idx)  # distributed: the global batch's size (moved up from below)
                if dist is not None:  # distributed: this rank's share of the global batch
                    idx = dist.share(idx)
                xb, yb = _cast(x[idx], model), y[idx]
                if dist is None:
                    out = model(xb)
                    value_t = loss(out, yb)
                    value = float(value_t)
                else:
                    # distributed: forward and backward on this rank's share (none when it is
                    # empty: a zero gradient), then one allreduce averages the gradients weighted
                    # by the shares and sums the batch's loss, accuracy and NaN flag, so every
                    # rank gets the global batch's figures and stops alike below.
                    acc = None
                    value = 0.0
                    model.zero_grad()
                    if len(idx):
                        out = model(xb)
                        value_t = loss(out, yb)
                        value = float(value_t)
                        value_t.backward()
                        acc = loss.accuracy(out, yb)
                    value, acc = dist.reduce_step(value, acc, len(idx), k)
                if not math.isfinite(value):
                    # The weights that produced this loss came from the previous step, which may
                    # have diverged: put back the weights from before it.
                    for p, s in zip(params, snapshot):
                        p.data[...] = s
                    for (mod, name), s in zip(buffers, buf_saved):
                        mod._buffers[name][...] = s
                    for a, s in zip(opt_snapshot, opt_saved):
                        a[...] = s
                    optimizer._set_step_count(opt_step)
                    history.stop_reason = (
                        f"loss became {value} at epoch {epoch + 1}, batch {b + 1}; training "
                        "stopped and the weights, buffers and optimiser state from before the "
                        "last step were restored"
                    )
                    if dist is None or dist.is_main:  # distributed: one warning, not one a rank
                        warnings.warn(f"fit: {history.stop_reason}", RuntimeWarning, stacklevel=2)
                    stop = True
                    break
                if dist is None:  # distributed: backward ran above, before the reduction
                    model.zero_grad()
                    value_t.backward()
                for i, (_, w) in enumerate(weights):
                    norms[i] += float(np.sqrt(np.sum(np.square(w.grad, dtype=np.float64))))
                for p, s in zip(params, snapshot):
                    s[...] = p.data
                for (mod, name), s in zip(buffers, buf_saved):
                    s[...] = mod._buffers[name]
                for a, s in zip(opt_snapshot, opt_saved):
                    s[...] = a
                opt_step = optimizer._step_count()
                optimizer.step()
                seen += k
                total_loss += value * k
                if dist is None:  # distributed: acc is the global batch's, from reduce_step
                    acc = loss.accuracy(out, yb)
                if acc is not None:
                    has_acc = True
                    total_correct += acc * k
                if bar is not None:
                    post = {"loss": f"{total_loss / seen:.4f}"}
                    if has_acc:
                        post["accuracy"] = f"{total_correct / seen:.4f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
        if dist is not None:
            # distributed: BatchNorm's running statistics came from this rank's shares; average
            # them over the ranks, so validation, callbacks and the fitted model see the same
            # buffers on every rank (every rank gets here, a NaN stop included).
            dist.sync_buffers()
        if seen == 0 and stop:
            if bar is not None:
                bar.close()
            break
        logs = {"loss": total_loss / max(seen, 1)}
        history["loss"].append(logs["loss"])
        if has_acc:
            logs["accuracy"] = total_correct / max(seen, 1)
            history["accuracy"].append(logs["accuracy"])
        history["grad_norms"].append(
            {name: norms[i] / max(steps, 1) for i, (name, _) in enumerate(weights)}
        )
        if validation_data is not None and not stop:
            if dist is None:
                scores = evaluate(model, loss, vx, vy, batch_size=max(batch_size, 256))
            else:  # distributed: each rank evaluates its share, the sums are reduced
                scores = dist.evaluate(model, loss, vx, vy, batch_size=max(batch_size, 256))
            logs["val_loss"] = scores["loss"]
            history["val_loss"].append(scores["loss"])
            if scores.get("accuracy") is not None:
                logs["val_accuracy"] = scores["accuracy"]
                history["val_accuracy"].append(scores["accuracy"])
        history["epoch_time"].append(time.perf_counter() - t0)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=True)
            bar.close()
        if stop:
            break
        for cb in callbacks:
            if cb.on_epoch_end(epoch, logs, model):
                history.stop_reason = (
                    f"{type(cb).__name__} stopped training after epoch {epoch + 1}"
                )
                stop = True
        if stop:
            break
    for cb in callbacks:
        cb.on_train_end(model)
    model.eval()
    return history


def predict(model: Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for x, in evaluation mode, batch by batch."""
    x = _check_x(x, "predict")
    batch_size = _check_batch_size(batch_size, "predict")
    _check_model_dtype(model, "predict")
    # Evaluation mode for this thread only: the model's own flags are left alone, so threads
    # may predict with one model concurrently (and while it trains).
    with inference_mode():
        outs = [
            as_array(model(_cast(x[i : i + batch_size], model)))
            for i in range(0, len(x), batch_size)
        ]
        if not outs:  # an empty batch: an empty result of the right shape
            return as_array(model(_cast(x, model)))
    return np.concatenate(outs, axis=0)


def evaluate(
    model: Module, loss: Loss, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> dict[str, float | None]:
    """Mean loss (and accuracy, for classification losses) of the model on (x, y); x must
    hold at least one example (a mean over none is not a score)."""
    x, y = _check_data(x, y, "evaluate")
    if len(x) == 0:
        raise ValueError("evaluate: x has 0 examples; there is nothing to evaluate")
    batch_size = _check_batch_size(batch_size, "evaluate")
    _check_model_dtype(model, "evaluate")
    out = predict(model, x, batch_size)
    return {"loss": float(loss(out, y)), "accuracy": loss.accuracy(out, y)}
