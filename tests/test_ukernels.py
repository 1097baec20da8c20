"""Every micro-kernel of the registry (cpp/kernels.inc) on its own, at every tile size it can be
called with, so that a kernel cannot go untested even where the driver would not reach it."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import _core

UKERNELS = _core.ukernels()
AVAILABLE = set(simdnn.cpu_info()["available"])


def test_registry_covers_every_isa_and_dtype():
    compiled = set(simdnn.cpu_info()["compiled"])
    seen = {(u["isa"], u["dtype"]) for u in UKERNELS if u["op"] == "gemm"}
    for isa in compiled:
        assert (isa, "float32") in seen
        assert (isa, "float64") in seen


def test_unavailable_kernels_are_refused():
    for u in UKERNELS:
        if u["isa"] not in AVAILABLE:  # pragma: no cover - depends on the CPU
            with pytest.raises(ValueError, match="not available"):
                _core.run_ukernel(
                    u["index"], np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)), 1, 0
                )


@pytest.mark.parametrize(
    "uk", [u for u in UKERNELS if u["isa"] in AVAILABLE], ids=lambda u: u["name"]
)
@pytest.mark.parametrize("a_layout", ["row", "column"])
def test_gemm_ukernel_every_tile(uk, a_layout):
    rng = np.random.default_rng(7)
    dtype = np.dtype(uk["dtype"])
    mr, nr = uk["mr"], uk["nr"]
    for m in range(1, mr + 1):
        for n in range(1, nr + 1):  # every live-vector count and mask
            for k in (0, 1, 17):
                a = rng.standard_normal((m, k)).astype(dtype)
                if a_layout == "column":
                    a = np.asfortranarray(a)  # unit row stride: the packed-panel layout
                # B with a row stride wider than the tile, as when read in place.
                b = rng.standard_normal((k, nr + 5)).astype(dtype)[:, :n]
                c0 = rng.standard_normal((m, n + 3)).astype(dtype)
                for alpha, beta in ((1.0, 0.0), (2.0, -1.5)):
                    c = c0.copy()
                    cv = c[:, :n]
                    _core.run_ukernel(uk["index"], a, b, cv, alpha, beta)
                    want = alpha * (a.astype(np.float64) @ b) + beta * c0[:, :n]
                    tol = 1e-5 if dtype == np.float32 else 1e-12
                    np.testing.assert_allclose(cv, want, rtol=tol, atol=tol * (k + 1))
                    # Columns past n are never touched.
                    np.testing.assert_array_equal(c[:, n:], c0[:, n:])


def test_ukernel_rejects_oversized_tiles():
    uk = next(u for u in UKERNELS if u["isa"] == "scalar" and u["dtype"] == "float32")
    a = np.ones((uk["mr"] + 1, 2), np.float32)
    with pytest.raises(ValueError, match="MR x NR"):
        _core.run_ukernel(
            uk["index"],
            a,
            np.ones((2, 1), np.float32),
            np.ones((uk["mr"] + 1, 1), np.float32),
            1,
            0,
        )
