"""The deep-net lab: ``python -m simdnn deep [--out deep.png] [--quick]``.

One deep MLP (20 weight layers: a stem, 18 hidden layers, a head) is trained four ways on
scikit-learn's bundled 8x8 digits, with the same optimiser, learning rate, batches and budget:

1. sigmoid units, small Gaussian weights (std 0.01): the pre-2006 recipe;
2. ReLU units, He initialisation;
3. the same plus batch normalisation after every hidden layer;
4. the same plus identity shortcuts around pairs of layers (residual blocks).

For each it records the held-out accuracy and training loss per epoch, and each layer's weight
gradient norm, once at initialisation (one batch) and averaged over training. The first/last
ratio of those norms is how vanishing gradients show themselves: in arm 1 the layers next to the
input get a gradient orders of magnitude smaller than the head's. Arms 3 and 4 mostly differ in
how fast the loss falls, not in gradient ratios: residual connections are an optimisation aid on
top of batch normalisation here, not the vanishing-gradient fix (He et al.'s plain nets already
used batch normalisation; the gradient argument for identity shortcuts is arXiv 1603.05027).
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import nn, optim
from .training import fit

#: (key, label) of the four arms, in order.
VARIANTS: tuple[tuple[str, str], ...] = (
    ("sigmoid", "sigmoid + small Gaussian"),
    ("relu", "ReLU + He"),
    ("bn", "ReLU + He + BatchNorm"),
    ("residual", "ReLU + He + BatchNorm + residual"),
)

#: Training recipe shared by every arm (chosen once, not per arm).
LR = 0.01
MOMENTUM = 0.9
BATCH_SIZE = 32
EPOCHS = 20
QUICK_EPOCHS = 3
WIDTH = 64


def batchnorm_available() -> bool:
    """Whether this build has the batch-normalisation kernels that ``nn.BatchNorm1d`` needs."""
    from .backend import backend_ops

    ops = backend_ops()
    return hasattr(ops, "batch_norm") and hasattr(ops, "batch_norm_backward")


def _hidden(
    kind: str, width: int, rng: np.random.Generator, *, last_act: bool = True
) -> list[nn.Module]:
    """One hidden layer of an arm: Linear (+ BatchNorm) + activation (unless last_act is False)."""
    if kind == "sigmoid":
        return [nn.Linear(width, width, init="small_normal", rng=rng), nn.Sigmoid()]
    layers: list[nn.Module] = [nn.Linear(width, width, init="kaiming_normal", rng=rng)]
    if kind in ("bn", "residual"):
        layers.append(nn.BatchNorm1d(width))
    if last_act:
        layers.append(nn.ReLU())
    return layers


def build_deep_net(kind: str, depth: int = 20, width: int = WIDTH, seed: int = 0) -> nn.Sequential:
    """The lab's network for one arm (a key of VARIANTS): `depth` Linear layers in all.

    64 -> width (stem, + BatchNorm in arms 3-4) -> depth - 2 hidden width x width layers ->
    10 (head). In the residual arm the hidden layers come in pairs, each pair wrapped as
    relu(x + BN(W2 relu(BN(W1 x)))) (the original ResNet block), so depth must be even there.
    Every arm draws its weights from the same seed.
    """
    keys = [k for k, _ in VARIANTS]
    if kind not in keys:
        raise ValueError(f"build_deep_net: kind must be one of {keys}, got {kind!r}")
    if depth < 3:
        raise ValueError(f"build_deep_net: depth must be >= 3, got {depth}")
    if kind == "residual" and depth % 2:
        raise ValueError(f"build_deep_net: the residual arm needs an even depth, got {depth}")
    rng = np.random.default_rng(seed)
    init_name = "small_normal" if kind == "sigmoid" else "kaiming_normal"
    act: Callable[[], nn.Module] = nn.Sigmoid if kind == "sigmoid" else nn.ReLU
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, width, init=init_name, rng=rng)]
    if kind in ("bn", "residual"):
        layers.append(nn.BatchNorm1d(width))
    layers.append(act())
    hidden = depth - 2
    if kind == "residual":
        for _ in range(hidden // 2):
            block = nn.Sequential(
                *_hidden(kind, width, rng), *_hidden(kind, width, rng, last_act=False)
            )
            layers += [nn.Residual(block), nn.ReLU()]
    else:
        for _ in range(hidden):
            layers += _hidden(kind, width, rng)
    # The head: the init the arm uses for every layer (small Gaussian weights for the sigmoid
    # net, He otherwise).
    layers.append(nn.Linear(width, 10, init=init_name, rng=rng))
    return nn.Sequential(*layers)


def _linear_norms(model: nn.Module) -> list[float]:
    """L2 norm of each Linear layer's weight gradient, input side first."""
    return [
        float(np.sqrt(np.sum(np.square(m.weight.grad, dtype=np.float64))))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]


def _init_norms(model: nn.Module, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Per-layer weight-gradient norms of the model as built, on one batch (training mode)."""
    model.train()
    model.zero_grad()
    nn.CrossEntropyLoss()(model(x), y).backward()
    return _linear_norms(model)


def _mean_training_norms(history: dict[str, Any]) -> list[float]:
    """Per Linear layer, its weight-gradient norm averaged over every batch of training."""
    per_epoch = [
        [v for k, v in epoch.items() if k.endswith("Linear")] for epoch in history["grad_norms"]
    ]
    return [float(v) for v in np.mean(np.asarray(per_epoch, dtype=np.float64), axis=0)]


def train_variant(
    kind: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    epochs: int = EPOCHS,
    depth: int = 20,
    width: int = WIDTH,
    seed: int = 0,
    lr: float = LR,
) -> dict[str, Any]:
    """Train one arm; returns its figures (see deep_lab)."""
    x_train, y_train, x_test, y_test = data
    init_batch = np.random.default_rng(seed + 1).choice(len(x_train), 256, replace=False)
    init_norms = _init_norms(
        build_deep_net(kind, depth, width, seed), x_train[init_batch], y_train[init_batch]
    )
    model = build_deep_net(kind, depth, width, seed)
    t0 = time.perf_counter()
    history = fit(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM),
        x_train,
        y_train,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        validation_data=(x_test, y_test),
        seed=seed,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    train_norms = _mean_training_norms(history)
    curve = [float(v) for v in history["val_accuracy"]]
    return {
        "test_accuracy": float(history["val_accuracy"][-1]) if history["val_accuracy"] else 0.0,
        "final_loss": float(history["loss"][-1]) if history["loss"] else float("nan"),
        "loss": [float(v) for v in history["loss"]],
        "test_accuracy_curve": curve,
        "epochs_to_90": next((i + 1 for i, a in enumerate(curve) if a >= 0.9), None),
        "init_norms": init_norms,
        "train_norms": train_norms,
        "ratio_init": init_norms[0] / init_norms[-1],
        "ratio_train": train_norms[0] / train_norms[-1] if train_norms else float("nan"),
        "seconds": seconds,
        "stop_reason": history.stop_reason,
    }


def deep_lab(
    out: str | os.PathLike[str] | None = None,
    epochs: int = EPOCHS,
    depth: int = 20,
    width: int = WIDTH,
    seed: int = 0,
    quiet: bool = False,
    variants: Sequence[str] | None = None,
    lr: float = LR,
) -> dict[str, dict[str, Any]]:
    """Train the deep net four ways (see the module docstring); print a table and, with `out`,
    plot the learning curves and the per-layer gradient norms.

    Returns, per arm key: ``test_accuracy`` (held-out, after the last epoch), ``final_loss``
    (mean training loss of the last epoch), ``loss`` and ``test_accuracy_curve`` (per epoch),
    ``init_norms`` (each Linear layer's weight-gradient norm at initialisation, on one batch of
    256), ``train_norms`` (the same averaged over every training batch), ``ratio_init`` and
    ``ratio_train`` (first layer's norm / last layer's), ``seconds``. An arm that cannot run
    (batch normalisation missing from this build) is reported with ``skipped``: the reason.
    """
    from .demos import load_digits_split

    data = load_digits_split()
    keys = [k for k, _ in VARIANTS] if variants is None else list(variants)
    labels = dict(VARIANTS)
    say: Callable[..., None] = (lambda *a, **k: None) if quiet else print
    say(
        f"deep-net lab: {depth} Linear layers of width {width} on the 8x8 digits "
        f"({len(data[0])} training, {len(data[2])} held-out images);\nevery arm: SGD lr {lr}, "
        f"momentum {MOMENTUM}, batch {BATCH_SIZE}, {epochs} epochs, seed {seed}"
    )
    results: dict[str, dict[str, Any]] = {}
    for key in keys:
        if key in ("bn", "residual") and not batchnorm_available():
            results[key] = {"skipped": "this build has no batch-normalisation kernels"}
            say(f"{labels[key]}: skipped ({results[key]['skipped']})")
            continue
        with np.errstate(over="ignore"):  # sigmoid's exp(-x) may overflow to inf: exact 0
            results[key] = train_variant(
                key, data, epochs=epochs, depth=depth, width=width, seed=seed, lr=lr
            )
    _print_table(results, labels, say, epochs)
    _print_reading(results, say)
    if out is not None:
        plot_deep_lab(results, out)
        say(f"plot written to {os.fspath(out)}")
    return results


def _print_table(
    results: dict[str, dict[str, Any]],
    labels: dict[str, str],
    say: Callable[..., None],
    epochs: int,
) -> None:
    say()
    say(
        f"{'':34s} {'test acc':>8s} {'train loss':>10s} "
        f"{'to 90%':>6s} {'|g1|/|gL| init':>14s} {'|g1|/|gL| train':>15s} {'time':>6s}"
    )
    for key, r in results.items():
        if "skipped" in r:
            continue
        to90 = "never" if r["epochs_to_90"] is None else str(r["epochs_to_90"])
        say(
            f"{labels[key]:34s} {100 * r['test_accuracy']:7.1f}% {r['final_loss']:10.3f} "
            f"{to90:>6s} {r['ratio_init']:14.1e} {r['ratio_train']:15.1e} {r['seconds']:5.1f}s"
        )
    say(
        f"test acc: held-out digits after {epochs} epochs (chance 10%); train loss: mean "
        "cross-entropy of the\nlast epoch (chance ln 10 = 2.30); to 90%: first epoch with 90% "
        "held-out accuracy;\n|g1|/|gL|: the first Linear layer's weight-gradient norm over the "
        "last one's, at initialisation\n(one batch of 256) and averaged over training."
    )


def _print_reading(results: dict[str, dict[str, Any]], say: Callable[..., None]) -> None:
    """What the table shows, with its numbers, in a few sentences."""
    ran = {k: r for k, r in results.items() if "skipped" not in r}
    lines = []
    if "sigmoid" in ran:
        r = ran["sigmoid"]
        lines.append(
            f"- sigmoid + small weights: the first layer's gradient is {r['ratio_init']:.0e} of "
            f"the last one's (vanishing); the loss stays near ln 10 and "
            f"{100 * r['test_accuracy']:.0f}% is "
            + ("chance." if r["test_accuracy"] < 0.2 else "far behind.")
        )
    if "relu" in ran:
        r = ran["relu"]
        lines.append(
            f"- ReLU + He keeps the gradient ratio near 1 ({r['ratio_init']:.1f}) and the net "
            f"learns ({100 * r['test_accuracy']:.0f}%), but its loss jumps about at this learning "
            "rate (with half of it, it trains smoothly and matches BatchNorm on this small "
            "task: much of BatchNorm's gain here is tolerance of a larger step)."
        )
    if "bn" in ran:
        lines.append("- BatchNorm trains the same net steadily at the same learning rate.")
    if "residual" in ran:
        lines.append(
            "- residual blocks on top make the loss fall fastest; their gradient ratios are much "
            "like BatchNorm's, so here they ease optimisation rather than fix vanishing gradients."
        )
    for line in lines:
        say(textwrap.fill(line, width=100, subsequent_indent="  "))


def plot_deep_lab(results: dict[str, dict[str, Any]], out: str | os.PathLike[str]) -> None:
    """Two panels: training loss per epoch; each layer's weight-gradient norm at initialisation
    (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise ImportError("the plot needs matplotlib: pip install matplotlib") from err
    labels = dict(VARIANTS)
    fig, (ax_loss, ax_norm) = plt.subplots(1, 2, figsize=(11, 4))
    for key, r in results.items():
        if "skipped" in r:
            continue
        (line,) = ax_loss.plot(
            range(1, len(r["loss"]) + 1), r["loss"], marker="o", ms=3, label=labels[key]
        )
        layers = range(1, len(r["init_norms"]) + 1)
        ax_norm.semilogy(layers, r["init_norms"], marker="o", ms=3, color=line.get_color())
        ax_norm.semilogy(layers, r["train_norms"], ls="--", color=line.get_color(), alpha=0.7)
    ax_loss.axhline(np.log(10), color="grey", lw=0.8, ls=":", label="chance (ln 10)")
    for ax in (ax_loss, ax_norm):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (cross-entropy)")
    ax_loss.set_title("Learning curves")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_norm.set_xlabel("Linear layer (1 = next to the input)")
    ax_norm.set_ylabel("|dL/dW|")
    ax_norm.set_title("Per-layer gradient norm: at init (solid), mean over training (dashed)")
    ax_norm.title.set_fontsize(9)
    ax_norm.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
