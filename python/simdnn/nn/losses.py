"""Losses: ``loss(pred, target)`` returns the mean loss as a one-element tensor; calling
``.backward()`` on it starts backpropagation (``float(value)`` gives the number).

Shape legend: N examples, D outputs (classes for CrossEntropyLoss).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..autograd import Tensor, as_array


class Loss:
    """Base class: ``__call__(pred, target) -> Tensor`` (a one-element tensor)."""

    def accuracy(self, pred: Any, target: Any) -> float | None:
        """The fraction of correct predictions for classification losses; None otherwise."""
        return None

    def __call__(self, pred: Any, target: Any) -> Tensor:
        return self.forward(pred, target)

    def forward(self, pred: Any, target: Any) -> Tensor:
        raise TypeError(f"{type(self).__name__} does not define forward()")

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

    def forward(self, pred: Any, target: Any) -> Tensor:
        return F.cross_entropy(pred, target)

    def accuracy(self, pred: Any, target: Any) -> float | None:
        p, t = as_array(pred), np.asarray(as_array(target))
        return float(np.mean(np.argmax(p, axis=1) == t)) if len(t) else 0.0


class MSELoss(Loss):
    """Mean squared error, averaged over every element. Gradient 2 (pred - target) / size.

    Shape:
        - pred: (N, *)
        - target: same shape as pred
    """

    def forward(self, pred: Any, target: Any) -> Tensor:
        return F.mse_loss(pred, target)


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy from logits, averaged over every element:
    max(x, 0) - x * y + log(1 + exp(-|x|)), which never overflows. Gradient
    (sigmoid(x) - y) / size.

    Shape:
        - pred: (N, *) logits
        - target: same shape, values in [0, 1]
    """

    def forward(self, pred: Any, target: Any) -> Tensor:
        return F.binary_cross_entropy_with_logits(pred, target)

    def accuracy(self, pred: Any, target: Any) -> float | None:
        p = as_array(pred)
        return float(np.mean((p > 0) == (np.asarray(as_array(target)) > 0.5))) if p.size else 0.0
