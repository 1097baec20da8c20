"""Type stub for the compiled extension simdnn._core (see cpp/bindings/).

tests/ops/test_surfaces.py checks that each op here takes the parameters of its function in
simdnn.ops, in the same order and with the same defaults, as the extension itself does."""

from typing import Any

import numpy as np

def cpu_info() -> dict[str, Any]: ...
def _set_flush_denormal(mode: bool) -> bool: ...
def _get_flush_denormal() -> bool: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...
def set_thread_isa(name: str | None) -> None: ...
def get_thread_isa() -> str | None: ...
def empty_cache() -> None: ...
def workspace_bytes() -> int: ...
def _parallel_check(ntasks: int, nthreads: int, raise_at: int = -1, repeat: int = 1) -> int: ...
def _stall_check(stall_us: int) -> dict[str, int]: ...
def _pool_stats() -> dict[str, int]: ...
def _set_thread_cap(n: int) -> None: ...
def _set_winograd_chunk_tasks(tasks: bool | None) -> None: ...
def _set_conv_lanes_wide(wide: bool | None) -> None: ...
def _set_gemm_swap(swap: bool | None) -> None: ...
def _set_conv_span_images(span: bool | None) -> None: ...
def _kill_self_after(seconds: float) -> bool: ...
def _cancel_kill_self() -> None: ...
def matmul(a: Any, b: Any, out: np.ndarray | None = None) -> np.ndarray: ...
def gemm(
    a: Any,
    b: Any,
    c: np.ndarray | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
    trans_a: bool = False,
    trans_b: bool = False,
    bias: Any = None,
    relu: bool = False,
) -> np.ndarray: ...
def ukernels() -> list[dict[str, Any]]: ...
def kernel_registry() -> list[dict[str, str]]: ...
def run_ukernel(
    index: int, a: np.ndarray, b: np.ndarray, c: np.ndarray, alpha: float, beta: float
) -> None: ...
def _set_gemm_a_pack_bytes(bytes: int) -> int: ...
def probe_fma_peak(nthreads: int, seconds: float = 0.2) -> float: ...
def probe_stream_bandwidth(nthreads: int, bytes: int = ...) -> float: ...
def conv2d(
    x: Any,
    w: Any,
    b: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    algorithm: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray: ...
def conv2d_backward_data(
    dy: Any,
    w: Any,
    x_shape: tuple[int, int, int, int],
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    algorithm: str = "auto",
) -> np.ndarray: ...
def conv2d_backward_weights(
    x: Any,
    dy: Any,
    w_shape: tuple[int, int, int, int],
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    algorithm: str = "auto",
) -> tuple[np.ndarray, np.ndarray]: ...
def max_pool2d(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]: ...
def max_pool2d_backward(
    dy: Any,
    indices: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
) -> np.ndarray: ...
def avg_pool2d(
    x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, count_include_pad: bool = True
) -> np.ndarray: ...
def avg_pool2d_backward(
    dy: Any,
    x_shape: tuple[int, int, int, int],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    count_include_pad: bool = True,
) -> np.ndarray: ...
def relu(x: Any) -> np.ndarray: ...
def relu_backward(dy: Any, x: Any) -> np.ndarray: ...
def softmax_cross_entropy(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]: ...
def bias_backward(
    dy: Any, y: Any = None, db: np.ndarray | None = None, accumulate: bool = False
) -> tuple[np.ndarray, np.ndarray]: ...
def sgd_update(
    param: np.ndarray,
    grad: Any,
    velocity: np.ndarray | None,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> None: ...
def adam_update(
    param: np.ndarray,
    grad: Any,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
) -> None: ...
def batch_norm(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def batch_norm_backward(
    dy: Any,
    x: Any,
    weight: Any,
    save_mean: Any,
    save_invstd: Any,
    training: bool,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]: ...
