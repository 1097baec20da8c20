"""The op registry (cpp/ops.inc): every op has a kernel for every ISA this CPU has and for both
dtypes, and the set of ops is the one below, so that an op cannot be left unregistered."""

from __future__ import annotations

import simdnn
from simdnn import _core

EXPECTED_OPS = {
    "gemm",
    "conv_forward",
    "conv_backward_data",
    "conv_backward_weights",
    "max_pool_forward",
    "max_pool_backward",
    "avg_pool_forward",
    "avg_pool_backward",
    "relu",
    "relu_backward",
    "bias_backward",
    "softmax_cross_entropy",
    "sgd",
    "adam",
    "batch_norm_forward",
    "batch_norm_backward",
}
DTYPES = ("float32", "float64")
REGISTRY = _core.kernel_registry()
AVAILABLE = set(simdnn.cpu_info()["available"])


def test_op_names_are_the_expected_ones():
    assert {e["op"] for e in REGISTRY} == EXPECTED_OPS


def test_every_op_has_every_available_isa_and_dtype():
    have = {(e["op"], e["isa"], e["dtype"]) for e in REGISTRY}
    want = {(op, isa, dt) for op in EXPECTED_OPS for isa in AVAILABLE for dt in DTYPES}
    assert want - have == set()


def test_entries_are_unique_and_only_for_available_isas():
    keys = [(e["op"], e["isa"], e["dtype"]) for e in REGISTRY]
    assert len(keys) == len(set(keys))
    assert {e["isa"] for e in REGISTRY} == AVAILABLE
    assert {e["dtype"] for e in REGISTRY} == set(DTYPES)


def test_each_op_belongs_to_one_family():
    family = {}
    for e in REGISTRY:
        assert family.setdefault(e["op"], e["family"]) == e["family"]
