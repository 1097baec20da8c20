"""Weight initialisers and the seedable random generator every random draw goes through.

``simdnn.seed(n)`` makes a run reproducible: layer initialisation, dropout masks and the
shuffling of :func:`simdnn.fit` all draw from :func:`generator` unless given their own
``numpy.random.Generator``.

Fan-in and fan-out: for a dense weight (D_in, D_out) they are D_in and D_out; for a convolution
weight (K, C/groups, R, S) they are C/groups * R * S and K * R * S (as in PyTorch and Keras).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

_generator = np.random.default_rng()


def seed(value: int) -> None:
    """Reseed the library-wide generator (initialisation, dropout, shuffling)."""
    global _generator
    _generator = np.random.default_rng(value)


def generator() -> np.random.Generator:
    """The library-wide generator."""
    return _generator


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a dense (D_in, D_out) or convolution (K, C/groups, R, S) weight."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    raise ValueError(f"fans: expected a 2-D or 4-D weight shape, got {shape}")


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return _generator if rng is None else rng


def xavier_uniform(
    shape: tuple[int, ...],
    dtype: npt.DTypeLike = np.float32,
    rng: np.random.Generator | None = None,
    gain: float = 1.0,
) -> np.ndarray:
    """Glorot/Xavier uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _rng(rng).uniform(-a, a, size=shape).astype(dtype)


def xavier_normal(
    shape: tuple[int, ...],
    dtype: npt.DTypeLike = np.float32,
    rng: np.random.Generator | None = None,
    gain: float = 1.0,
) -> np.ndarray:
    """Glorot/Xavier normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return (_rng(rng).standard_normal(size=shape) * std).astype(dtype)


def kaiming_uniform(
    shape: tuple[int, ...],
    dtype: npt.DTypeLike = np.float32,
    rng: np.random.Generator | None = None,
    gain: float = math.sqrt(2.0),
) -> np.ndarray:
    """He/Kaiming uniform for ReLU: U(-a, a), a = gain * sqrt(3 / fan_in), gain sqrt(2)."""
    fan_in, _ = fans(shape)
    a = gain * math.sqrt(3.0 / fan_in)
    return _rng(rng).uniform(-a, a, size=shape).astype(dtype)


def kaiming_normal(
    shape: tuple[int, ...],
    dtype: npt.DTypeLike = np.float32,
    rng: np.random.Generator | None = None,
    gain: float = math.sqrt(2.0),
) -> np.ndarray:
    """He/Kaiming normal for ReLU: N(0, std^2), std = gain / sqrt(fan_in), gain sqrt(2)."""
    fan_in, _ = fans(shape)
    return (_rng(rng).standard_normal(size=shape) * (gain / math.sqrt(fan_in))).astype(dtype)


def small_normal(
    shape: tuple[int, ...],
    dtype: npt.DTypeLike = np.float32,
    rng: np.random.Generator | None = None,
    std: float = 0.01,
) -> np.ndarray:
    """The small Gaussian of classic from-scratch MLPs: N(0, 0.01^2), whatever the fan-in.

    With sigmoid units it makes gradients vanish layer after layer (see
    ``python -m simdnn vanishing``).
    """
    return (_rng(rng).standard_normal(size=shape) * std).astype(dtype)


def zeros(
    shape: tuple[int, ...],
    dtype: npt.DTypeLike = np.float32,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "xavier_uniform": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform,
    "he_uniform": kaiming_uniform,
    "kaiming_normal": kaiming_normal,
    "he_normal": kaiming_normal,
    "small_normal": small_normal,
    "zeros": zeros,
}


def get(name: str) -> Callable[..., np.ndarray]:
    """An initialiser by name (ValueError listing the names otherwise)."""
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown initializer {name!r}; expected one of {sorted(INITIALIZERS)}"
        ) from None
