"""Losses: ``loss(pred, target)`` returns the mean loss as a float and caches what
``loss.backward()`` needs to return d(loss)/d(pred), the gradient that starts backpropagation.

Shape legend: N examples, D outputs (classes for CrossEntropyLoss).
"""

from __future__ import annotations

import numpy as np

from .. import functional as F


def _check_pred(name: str, pred: np.ndarray) -> None:
    if not isinstance(pred, np.ndarray) or pred.dtype not in (np.float32, np.float64):
        raise TypeError(
            f"{name}: predictions must be a float32 or float64 array, got "
            f"{getattr(pred, 'dtype', type(pred).__name__)}"
        )


def _check_same_length(name: str, pred: np.ndarray, target: np.ndarray) -> None:
    if len(target) != len(pred):
        raise ValueError(
            f"{name}: {len(pred)} predictions but {len(target)} targets; they must match"
        )


class Loss:
    """Base class: ``__call__(pred, target) -> float``, then ``backward() -> grad of pred``."""

    # Whether accuracy is defined for this loss (classification), and how.
    def accuracy(self, pred: np.ndarray, target: np.ndarray) -> float | None:
        return None

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        return self.forward(pred, target)

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def backward(self) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} does not define backward()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy from logits and integer class labels, averaged over the batch.

    Computed as log-sum-exp minus the true class's logit (a stable log-softmax), so large
    logits do not overflow. Gradient: (softmax(logits) - one_hot(labels)) / N.

    Shape:
        - pred: (N, D) logits
        - target: (N,) integer labels in [0, D)
    """

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        name = "CrossEntropyLoss"
        _check_pred(name, pred)
        if pred.ndim != 2:
            raise ValueError(f"{name}: logits must be 2-D (N, classes), got shape {pred.shape}")
        target = np.asarray(target)
        if target.dtype.kind not in "iu":
            raise TypeError(
                f"{name}: labels must be integers (class indices), got dtype {target.dtype}"
            )
        if target.ndim != 1:
            raise ValueError(f"{name}: labels must be 1-D (N,), got shape {target.shape}")
        _check_same_length(name, pred, target)
        classes = pred.shape[1]
        if target.size and (target.min() < 0 or target.max() >= classes):
            bad = target[(target < 0) | (target >= classes)]
            raise ValueError(
                f"{name}: labels must be in [0, {classes}) for {classes} classes, found {bad[0]}"
            )
        logp = F.log_softmax(pred, axis=1)
        self._probs = np.exp(logp)
        self._target = target
        n = max(len(target), 1)
        return float(-logp[np.arange(len(target)), target].sum() / n)

    def backward(self) -> np.ndarray:
        grad = self._probs.copy()
        grad[np.arange(len(self._target)), self._target] -= 1
        grad /= max(len(self._target), 1)
        return grad

    def accuracy(self, pred: np.ndarray, target: np.ndarray) -> float | None:
        return float(np.mean(np.argmax(pred, axis=1) == target)) if len(target) else 0.0


class MSELoss(Loss):
    """Mean squared error, averaged over every element. Gradient 2 (pred - target) / size.

    Shape:
        - pred: (N, *)
        - target: same shape as pred
    """

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        name = "MSELoss"
        _check_pred(name, pred)
        target = np.asarray(target, dtype=pred.dtype)
        if target.shape != pred.shape:
            raise ValueError(
                f"{name}: target has shape {target.shape}, predictions have {pred.shape}"
            )
        self._diff = pred - target
        return float(np.mean(self._diff * self._diff)) if pred.size else 0.0

    def backward(self) -> np.ndarray:
        return self._diff * self._diff.dtype.type(2.0 / max(self._diff.size, 1))


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy from logits, averaged over every element:
    max(x, 0) - x * y + log(1 + exp(-|x|)), which never overflows. Gradient
    (sigmoid(x) - y) / size.

    Shape:
        - pred: (N, *) logits
        - target: same shape, values in [0, 1]
    """

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        name = "BCEWithLogitsLoss"
        _check_pred(name, pred)
        target = np.asarray(target, dtype=pred.dtype)
        if target.shape != pred.shape:
            raise ValueError(
                f"{name}: target has shape {target.shape}, predictions have {pred.shape}"
            )
        if target.size and (target.min() < 0 or target.max() > 1):
            raise ValueError(f"{name}: targets must be in [0, 1]")
        self._x, self._y = pred, target
        loss = np.maximum(pred, 0) - pred * target + np.log1p(np.exp(-np.abs(pred)))
        return float(np.mean(loss)) if pred.size else 0.0

    def backward(self) -> np.ndarray:
        return (F.sigmoid(self._x) - self._y) / self._x.dtype.type(max(self._x.size, 1))

    def accuracy(self, pred: np.ndarray, target: np.ndarray) -> float | None:
        return float(np.mean((pred > 0) == (np.asarray(target) > 0.5))) if pred.size else 0.0
