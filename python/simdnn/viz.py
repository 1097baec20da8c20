"""Look inside a ConvNet: feature maps and filters as arrays, and as PNG grids when matplotlib is
installed (``pip install matplotlib``)."""

from __future__ import annotations

import math
import os

import numpy as np

from .nn.module import Module, Sequential, inference_mode


def _layer_index(model: Sequential, layer: int | Module) -> int:
    if isinstance(layer, Module):
        for i, m in enumerate(model):
            if m is layer:
                return i
        raise ValueError(f"feature_maps: {layer!r} is not a layer of the model")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"feature_maps: layer must be an index or a layer, got {layer!r}")
    if not -len(model) <= layer < len(model):
        raise IndexError(f"feature_maps: layer {layer} out of range for {len(model)} layers")
    return int(layer) % len(model)


def feature_maps(
    model: Sequential,
    x: np.ndarray,
    layer: int | Module,
    save: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The output of `layer` (an index into the Sequential, or the layer itself) for input x.

    For a convolution or pooling layer this is (N, K, P, Q): one P x Q feature map per filter,
    bright where the filter's pattern appears. With `save`, writes a grid of the first example's
    maps to that PNG path.
    """
    if not isinstance(model, Sequential):
        raise TypeError("feature_maps: model must be a Sequential")
    stop = _layer_index(model, layer)
    out = np.asarray(x, dtype=model.dtype)
    with inference_mode():
        for m in model.layers[: stop + 1]:
            out = np.asarray(m(out))
    if save is not None:
        if out.ndim != 4:
            raise ValueError(
                f"feature_maps: layer {stop} gives shape {out.shape}, not (N, K, P, Q)"
            )
        _save_grid(out[0], save, f"feature maps of layer {stop} ({type(model[stop]).__name__})")
    return out


def filters(layer: Module, save: str | os.PathLike[str] | None = None) -> np.ndarray:
    """A convolution layer's weights, (K, C/groups, R, S); with `save`, a PNG grid of the
    filters (input channels averaged), i.e. the patterns the feature maps respond to."""
    w = getattr(layer, "weight", None)
    if w is None or w.data.ndim != 4:
        raise TypeError(f"filters: {layer!r} is not a convolution layer")
    if save is not None:
        _save_grid(w.data.mean(axis=1), save, f"filters of {layer!r}")
    return w.data.copy()


def _save_grid(maps: np.ndarray, path: str | os.PathLike[str], title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("saving a picture needs matplotlib: pip install matplotlib") from err
    k = maps.shape[0]
    cols = min(8, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(maps[i], cmap="viridis", interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
