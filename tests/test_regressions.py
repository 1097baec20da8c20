"""Plain reproducers of the bugs that the property tests (test_properties.py, test_threads.py,
test_nonfinite.py) found, one test per bug, each named after it."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import ops

# ------------------------------------------------------------------------------------------------
# cpp/bindings/gemm.cpp: a one-row `out` was written with a unit column stride whatever its own.


@pytest.mark.parametrize("isa", simdnn.cpu_info()["available"])
def test_matmul_one_row_out_with_column_step_or_reversed(isa):
    a = np.ones((1, 3), np.float32)
    b = np.ones((3, 10), np.float32) * np.arange(10, dtype=np.float32)
    want = a @ b
    with simdnn.use_isa(isa):
        stepped = np.full((1, 20), np.nan, np.float32)
        ops.matmul(a, b, out=stepped[:, ::2])  # was written into stepped[0, :10]
        np.testing.assert_array_equal(stepped[:, ::2], want)
        assert np.all(np.isnan(stepped[:, 1::2]))
        # A reversed row: was written from its last element onwards, past the buffer's end
        # (glibc then aborted with "corrupted size vs. prev_size").
        buf = np.full((1, 12), np.nan, np.float32)
        ops.matmul(a, b, out=buf[:, 1:11][:, ::-1])
        np.testing.assert_array_equal(buf[:, 1:11][:, ::-1], want)
        assert np.isnan(buf[0, 0])
        assert np.isnan(buf[0, 11])
