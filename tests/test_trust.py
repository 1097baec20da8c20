"""Hostile inputs and races, each a regression test: persistence (atomic save, validated load,
error contracts), the training loop (bad dtypes, the NaN guard, EarlyStopping, empty data, mixed
precision), threads (inference does not touch shared state, per-thread backends) and a property
test that round-trips random architectures through save/load bit for bit. The cases where size
is the point run in their own subprocess under a memory limit."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import simdnn
from simdnn import deep, demos, nn, optim, viz

# Prepended by run_isolated(memory_limit=True): a 1.5 GB address-space limit, so that an
# allocation of what a hostile file declares fails instead of filling the machine. (Under
# AddressSanitizer, whose shadow memory needs terabytes of address space, there is no limit and
# only the tests' growth checks hold.)
_MEMORY_LIMIT = """\
import os, resource
if "libasan" not in os.environ.get("LD_PRELOAD", ""):
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
"""


def run_isolated(
    code: str, timeout: float = 120, memory_limit: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter (its own resource limits), failing on a hang; with
    memory_limit, under a 1.5 GB address-space limit."""
    source = (_MEMORY_LIMIT if memory_limit else "") + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def small_model() -> nn.Sequential:
    rng = np.random.default_rng(0)
    return nn.Sequential(nn.Linear(4, 8, rng=rng), nn.ReLU(), nn.Linear(8, 3, rng=rng))


def write_npz(path, arch: dict, arrays: dict[str, np.ndarray]) -> None:
    np.savez(
        path,
        __simdnn_architecture__=np.array(json.dumps(arch)),
        **{f"param:{k}": v for k, v in arrays.items()},
    )


def arch_of(model_desc: dict) -> dict:
    return {"format": "simdnn-model", "version": 2, "dtype": "float32", "model": model_desc}


def _describe_small_model() -> dict:
    """The architecture entry of small_model()."""
    linear = {"class": "Linear", "config": {"in_features": 4, "out_features": 8}}
    last = {"class": "Linear", "config": {"in_features": 8, "out_features": 3}}
    return {"class": "Sequential", "children": {"0": linear, "1": {"class": "ReLU"}, "2": last}}


# ------------------------------------------------------------------------------------------------
# Persistence


def test_save_is_atomic_when_the_disk_fills(tmp_path):
    """A write that fails part-way (RLIMIT_FSIZE: the file-size limit) leaves the previous
    checkpoint whole and no temporary file behind."""
    path = tmp_path / "ckpt.npz"
    proc = run_isolated(
        f"""
        import os, resource, signal
        import numpy as np, simdnn
        from simdnn import nn
        simdnn.save(nn.Sequential(nn.Linear(4, 3)), {str(path)!r})
        big = nn.Sequential(nn.Linear(200, 200))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
        try:
            simdnn.save(big, {str(path)!r})
        except OSError as err:
            print("refused", err.errno)
        """
    )
    assert "refused" in proc.stdout, proc.stderr
    loaded = simdnn.load(path)
    assert loaded[0].weight.shape == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_save_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "m.npz"
    simdnn.save(small_model(), path)
    os.chmod(path, 0o640)
    simdnn.save(small_model(), path)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_save_over_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "checkpoints" / "best.npz"
    real.parent.mkdir()
    simdnn.save(nn.Sequential(nn.Linear(4, 3)), real)
    link = tmp_path / "latest.npz"
    link.symlink_to(real)
    simdnn.save(small_model(), link)
    assert link.is_symlink()
    assert simdnn.load(real)[2].weight.shape == (8, 3)
    assert sorted(p.name for p in real.parent.iterdir()) == ["best.npz"]


def test_save_gives_a_new_file_the_umask_without_changing_it(tmp_path, monkeypatch):
    """A new file gets the permissions a plain open() gives (0o666 less the umask), which the
    kernel applies: save never calls os.umask, which would change the umask of every thread
    of the process while it reads it."""
    old = os.umask(0o027)
    try:

        def no_umask(mask: int) -> int:
            raise AssertionError("save called os.umask")

        monkeypatch.setattr(os, "umask", no_umask)
        simdnn.save(small_model(), tmp_path / "new.npz")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert os.stat(tmp_path / "new.npz").st_mode & 0o777 == 0o640


def test_load_checks_the_architecture_before_allocating(tmp_path):
    """An 888-byte file declaring Linear(20000, 20000) (3.2 GB of weights and gradients) is
    refused under a 1.5 GB address-space limit, and the process grows by under 64 MiB: nothing
    was allocated to find out. (Under AddressSanitizer, whose shadow memory needs terabytes of
    address space, only the growth is checked.)"""
    path = tmp_path / "huge.npz"
    desc = {
        "class": "Sequential",
        "children": {
            "0": {
                "class": "Linear",
                "config": {
                    "in_features": 20000,
                    "out_features": 20000,
                    "bias": True,
                    "init": "xavier_uniform",
                },
            }
        },
    }
    write_npz(path, arch_of(desc), {"0.weight": np.zeros((2, 2), np.float32),
                                    "0.bias": np.zeros(2, np.float32)})  # fmt: skip
    assert path.stat().st_size < 2000
    proc = run_isolated(
        f"""
        import resource
        import simdnn
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            simdnn.load({str(path)!r})
        except ValueError as err:
            print("ValueError:", err)
        print("grown KiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """,
        memory_limit=True,
    )
    assert "ValueError:" in proc.stdout, proc.stdout + proc.stderr
    assert "'0.weight' has shape (2, 2), the architecture needs (20000, 20000)" in proc.stdout
    assert int(proc.stdout.split("grown KiB")[1]) < 64 * 1024


def _deflated_zeros_entry(zf: zipfile.ZipFile, name: str, shape: tuple[int, ...]) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as out:
        out.write(header.getvalue())
        chunk = bytes(1 << 24)
        left = int(np.prod(shape)) * 4
        while left:
            n = min(left, len(chunk))
            out.write(chunk[:n])
            left -= n


def _bomb(path) -> None:
    """small_model() saved to path, plus an entry 'extra' of about half a megabyte that
    inflates to 512 MiB."""
    simdnn.save(small_model(), path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        _deflated_zeros_entry(zf, "param:extra.npy", (128, 1024, 1024))
    assert path.stat().st_size < 1 << 20


def test_load_reads_no_unexpected_entry(tmp_path):
    """A file of about half a megabyte whose extra entry inflates to 512 MiB is refused by name,
    without inflating it: the process stays far below 512 MiB."""
    path = tmp_path / "bomb.npz"
    _bomb(path)
    proc = run_isolated(
        f"""
        import resource
        import simdnn
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            simdnn.load({str(path)!r})
        except ValueError as err:
            print("ValueError:", err)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("grown KiB", grown)
        """,
        memory_limit=True,
    )
    assert "unexpected ['extra']" in proc.stdout, proc.stdout + proc.stderr
    grown = int(proc.stdout.split("grown KiB")[1])
    assert grown < 64 * 1024


def test_load_state_dict_refuses_an_entry_that_inflates_512_times_the_file(tmp_path):
    """load_state_dict has no architecture to check against, so it bounds what it reads by the
    file's size: the half-megabyte file inflating to 512 MiB is refused from the sizes its
    entries declare, and the process grows by under 64 MiB."""
    path = tmp_path / "bomb.npz"
    _bomb(path)
    proc = run_isolated(
        f"""
        import resource
        import simdnn
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            simdnn.load_state_dict({str(path)!r})
        except ValueError as err:
            print("ValueError:", err)
        print("grown KiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """,
        memory_limit=True,
    )
    assert "more than max_bytes='auto' allows" in proc.stdout, proc.stdout + proc.stderr
    assert int(proc.stdout.split("grown KiB")[1]) < 64 * 1024


def test_load_state_dict_max_bytes(tmp_path):
    """An int sets the bound, None lifts it; the default reads every file save writes."""
    path = tmp_path / "m.npz"
    model = small_model()
    simdnn.save(model, path)
    nbytes = sum(v.nbytes for v in model.state_dict().values())
    assert list(simdnn.load_state_dict(path)) == list(model.state_dict())
    assert list(simdnn.load_state_dict(path, max_bytes=nbytes)) == list(model.state_dict())
    assert list(simdnn.load_state_dict(path, max_bytes=None)) == list(model.state_dict())
    with pytest.raises(ValueError, match=f"declares {nbytes} bytes of arrays"):
        simdnn.load_state_dict(path, max_bytes=nbytes - 1)
    with pytest.raises(TypeError, match=r"max_bytes must be an int, 'auto' or None, got 1\.5"):
        simdnn.load_state_dict(path, max_bytes=1.5)
    with pytest.raises(ValueError, match="max_bytes must be >= 0, got -1"):
        simdnn.load_state_dict(path, max_bytes=-1)


def test_load_refuses_a_header_declaring_32_gib(tmp_path):
    """A header declaring 32 GiB over a few bytes of data is refused from the sizes, in a process
    that could not allocate them."""
    path = tmp_path / "m.npz"
    simdnn.save(small_model(), path)
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    old = members["param:0.weight.npy"]
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        hdr, {"descr": "<f4", "fortran_order": False, "shape": (4, 2 << 30)}
    )
    members["param:0.weight.npy"] = hdr.getvalue() + old[len(hdr.getvalue()) :]
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    assert len(data) > 0
    proc = run_isolated(
        f"""
        import simdnn
        for load in (simdnn.load, simdnn.load_state_dict):
            try:
                load({str(path)!r})
            except ValueError as err:
                print("ValueError:", err)
        """,
        memory_limit=True,
    )
    assert proc.stdout.count("declares 34359738368 bytes of data") == 2, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        ({"class": "Linear", "config": {"in_features": 2, "out_features": 2, "rng": 5}},
         "rng must be a numpy.random.Generator"),
        ({"class": "LeakyReLU", "config": {"negative_slope": "abc"}}, "negative_slope"),
        ({"class": "Softmax", "config": {"axis": 10**30}}, "axis"),
        ({"class": "Dropout", "config": {"p": 0.5, "rng": 5}}, "rng"),
        ({"class": "Linear", "config": {"in_features": -3, "out_features": 2}}, "in_features"),
        ({"class": "Conv2d", "config": {"in_channels": 1, "out_channels": 2,
                                        "kernel_size": [3, "x"]}}, "kernel_size"),
        ({"class": "Bogus"}, "unknown layer class 'Bogus'"),
        ({"ref": "9"}, "unknown module"),
        ([1, 2], "malformed architecture entry"),
    ],
)  # fmt: skip
def test_load_raises_value_error_for_malformed_layers(tmp_path, layer, words):
    path = tmp_path / "bad.npz"
    write_npz(path, arch_of({"class": "Sequential", "children": {"0": layer}}), {})
    with pytest.raises(ValueError, match=words):
        simdnn.load(path)


@pytest.mark.parametrize(
    ("later", "first"),
    [("2.weight", "0.weight"), ("2.bias", "0.weight")],
    ids=["weight-of-another-shape", "bias-to-a-weight"],
)
def test_load_refuses_tied_parameters_of_another_shape(tmp_path, later, first):
    """A tied-weight map joining parameters of different shapes is refused at load, not at the
    first forward."""
    path = tmp_path / "tied.npz"
    model = small_model()
    state = model.state_dict()
    del state[later]
    arch = arch_of(_describe_small_model())
    arch["tied"] = {later: first}
    write_npz(path, arch, state)
    with pytest.raises(ValueError, match=f"tied parameter '{later}' -> '{first}'.*shape"):
        simdnn.load(path)


@pytest.mark.parametrize("count", [np.uint64(2**64 - 1), np.int64(-3)], ids=["wraps", "negative"])
def test_load_refuses_a_batch_count_outside_its_range(tmp_path, count):
    """A BatchNorm batch count of uint64 2**64 - 1 wrapped to -1 in the int64 buffer, and the
    next training forward with momentum=None divided by zero."""
    path = tmp_path / "bn.npz"
    layer = {"class": "BatchNorm1d", "config": {"num_features": 3, "momentum": None}}
    z = np.zeros(3, np.float32)
    arrays = {"0.weight": z, "0.bias": z, "0.running_mean": z, "0.running_var": z + 1}
    arrays["0.num_batches_tracked"] = np.array(count)
    write_npz(path, arch_of({"class": "Sequential", "children": {"0": layer}}), arrays)
    with pytest.raises(ValueError, match=r"'0.num_batches_tracked' holds -?\d+, outside \[0, "):
        simdnn.load(path)
    model = nn.Sequential(nn.BatchNorm1d(3, momentum=None))
    with pytest.raises(ValueError, match=r"'0.num_batches_tracked' holds -?\d+, outside \[0, "):
        model.load_state_dict(simdnn.load_state_dict(path))
    assert int(model[0].num_batches_tracked) == 0  # nothing copied


def test_load_raises_value_error_for_deep_nesting(tmp_path):
    path = tmp_path / "deep.npz"
    depth = 100_000
    text = '{"format": "simdnn-model", "version": 2, "model": ' + "[" * depth + "]" * depth + "}"
    np.savez(path, __simdnn_architecture__=np.array(text))
    with pytest.raises(ValueError, match="nested too deeply"):
        simdnn.load(path)
    nested: dict = {"class": "Identity"}
    for _ in range(300):
        nested = {"class": "Sequential", "children": {"0": nested}}
    write_npz(path, arch_of(nested), {})
    with pytest.raises(ValueError, match="nested more than 200 levels"):
        simdnn.load(path)


def test_layer_constructors_validate_their_arguments():
    with pytest.raises(TypeError, match="negative_slope must be a real number"):
        nn.LeakyReLU(negative_slope="abc")
    with pytest.raises(ValueError, match="axis must be in"):
        nn.Softmax(axis=10**30)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        nn.Dropout(rng=5)
    with pytest.raises(TypeError, match="in_features must be an int"):
        nn.Linear(2.5, 3)
    with pytest.raises(ValueError, match="momentum must be in"):
        nn.BatchNorm1d(3, momentum=2.0)
    with pytest.raises(TypeError, match="bias must be True or False"):
        nn.Conv2d(1, 1, 3, bias="yes")


@pytest.mark.parametrize(
    ("make", "exc", "words"),
    [
        (lambda: nn.Linear(2, 3, dtype="abc"), TypeError,
         "Linear: dtype must be float32 or float64, got 'abc'"),
        (lambda: nn.Conv2d(1, 2, 3, dtype=np.int32), TypeError,
         "Conv2d: dtype must be float32 or float64, got int32"),
        (lambda: nn.BatchNorm1d(3, dtype=[1, 2]), TypeError,
         r"BatchNorm1d: dtype must be float32 or float64, got \[1, 2\]"),
        (lambda: nn.Linear(10**30, 3), ValueError,
         r"Linear: in_features must be < 2\*\*62, got 10{30}"),
        (lambda: nn.Conv1d(1, 2**62, 3), ValueError,
         r"Conv1d: out_channels must be < 2\*\*62, got 4611686018427387904"),
        (lambda: nn.Conv2d(1, 2, (3, 10**30)), ValueError,
         r"Conv2d: kernel_size must be < 2\*\*62, got \(3, 10{30}\)"),
        (lambda: nn.MaxPool2d(2, stride=10**30), ValueError,
         r"MaxPool2d: stride must be < 2\*\*62"),
        (lambda: nn.BatchNorm2d(10**30), ValueError,
         r"BatchNorm2d: num_features must be < 2\*\*62"),
    ],
)  # fmt: skip
def test_layer_constructors_name_a_bad_dtype_or_size(make, exc, words):
    """NumPy's own messages ("data type 'abc' not understood", "Maximum allowed dimension
    exceeded") name neither the layer nor the argument."""
    with pytest.raises(exc, match=words):
        make()


@pytest.mark.parametrize(
    "bad",
    [
        np.ones((4, 8), np.complex64),
        np.array([["1.0"] * 8] * 4),
        np.full((4, 8), np.datetime64("2026-01-01")),
        np.full((4, 8), np.timedelta64(1, "s")),
    ],
    ids=["complex", "string", "datetime", "timedelta"],
)
def test_non_real_weights_are_refused(tmp_path, bad):
    model = small_model()
    path = tmp_path / "m.npz"
    state = model.state_dict()
    arrays = dict(state)
    arrays["0.weight"] = bad
    desc = {"class": "Sequential", "children": {
        "0": {"class": "Linear", "config": {"in_features": 4, "out_features": 8}},
        "1": {"class": "ReLU"},
        "2": {"class": "Linear", "config": {"in_features": 8, "out_features": 3}}}}  # fmt: skip
    write_npz(path, arch_of(desc), arrays)
    with pytest.raises(ValueError, match=r"'0\.weight' has dtype"):
        simdnn.load(path)
    with pytest.raises(ValueError, match=r"'0\.weight' has dtype"):
        simdnn.load_state_dict(path)
    state["0.weight"] = bad
    before = model[0].weight.data.copy()
    with pytest.raises(TypeError, match=r"'0\.weight' has dtype"):
        model.load_state_dict(state)
    np.testing.assert_array_equal(model[0].weight.data, before)


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_is_all_or_nothing(strict):
    model = small_model()
    before = [p.data.copy() for p in model.parameters()]
    state = {k: v + 1 for k, v in model.state_dict().items()}
    state["2.weight"] = np.zeros((3, 8), np.float32)  # wrong shape in the last layer
    with pytest.raises(ValueError, match=r"'2\.weight' has shape"):
        model.load_state_dict(state, strict=strict)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


def test_load_returns_a_model_in_eval_mode(tmp_path):
    simdnn.save(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)), tmp_path / "m.npz")
    model = simdnn.load(tmp_path / "m.npz")
    assert not model.training
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(model(x).data, model(x).data)


# ------------------------------------------------------------------------------------------------
# Training loop


@pytest.mark.parametrize(
    "x",
    [
        np.ones((8, 4), np.complex128),
        np.array([["a"] * 4] * 8),
        np.full((8, 4), np.datetime64("2026-01-01")),
        np.empty((8, 4), object),
    ],
    ids=["complex", "string", "datetime", "object"],
)
def test_fit_refuses_non_real_inputs(x):
    model = small_model()
    with pytest.raises(TypeError, match="x must hold real numbers"):
        simdnn.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()), x,
                   np.zeros(8, int), progress=False)  # fmt: skip
    with pytest.raises(TypeError, match="x must hold real numbers"):
        simdnn.predict(model, x)


def test_nan_guard_restores_the_optimiser_state_too():
    """A diverging step is undone in full: the momentum buffer does not keep the huge values,
    so the next fit on clean data trains normally."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = small_model()
    opt = optim.SGD(model.parameters(), lr=1e4, momentum=0.9)
    with pytest.warns(RuntimeWarning, match="weights, buffers and optimiser state"):
        hist = simdnn.fit(model, nn.CrossEntropyLoss(), opt, x * 1e6, y, epochs=3,
                          batch_size=8, progress=False)  # fmt: skip
    assert hist.stop_reason is not None
    assert all(np.isfinite(v).all() for v in opt._state_arrays())
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    opt.lr = 0.05
    hist = simdnn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=5, batch_size=8,
                      progress=False)  # fmt: skip
    assert hist.stop_reason is None
    assert np.isfinite(hist["loss"]).all()


def test_adam_step_count_is_restored_with_its_moments():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=1e3)
    with pytest.warns(RuntimeWarning, match="became"):
        simdnn.fit(model, nn.MSELoss(), opt, x, np.full((16, 3), 1e30, np.float32), epochs=4,
                   batch_size=4, progress=False, shuffle=False)  # fmt: skip
    assert all(np.isfinite(v).all() for v in opt._state_arrays())


def test_nan_guard_restores_batchnorm_running_statistics():
    """The forward that produced a NaN loss has already moved BatchNorm's running statistics
    (to NaN) and its batch count: they are put back with the weights, to what the three good
    batches left, so the model still evaluates."""

    def model() -> nn.Sequential:
        rng = np.random.default_rng(0)
        return nn.Sequential(nn.Linear(4, 8, rng=rng), nn.BatchNorm1d(8), nn.Linear(8, 3, rng=rng))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    x[24:32] = np.inf  # the fourth batch of 8 overflowed upstream
    diverged = model()
    with pytest.warns(RuntimeWarning, match="batch 4"):
        simdnn.fit(diverged, nn.CrossEntropyLoss(), optim.SGD(diverged.parameters(), lr=0.1), x,
                   y, batch_size=8, shuffle=False, progress=False)  # fmt: skip
    clean = model()
    simdnn.fit(clean, nn.CrossEntropyLoss(), optim.SGD(clean.parameters(), lr=0.1), x[:24],
               y[:24], batch_size=8, shuffle=False, progress=False)  # fmt: skip
    got, want = dict(diverged.named_buffers()), dict(clean.named_buffers())
    assert list(got) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    for name in got:
        np.testing.assert_array_equal(got[name], want[name])
    assert got["1.num_batches_tracked"] == 3
    assert np.isfinite(simdnn.predict(diverged, x[:24])).all()


def test_early_stopping_treats_non_finite_figures_as_worse():
    stop = simdnn.EarlyStopping(monitor="val_loss", patience=1)
    model = small_model()
    stop.on_train_begin(model)
    with pytest.warns(RuntimeWarning, match="val_loss is nan"):
        assert not stop.on_epoch_end(0, {"val_loss": float("nan")}, model)
    assert stop.best is None
    assert not stop.on_epoch_end(1, {"val_loss": 0.5}, model)
    assert stop.best == 0.5
    assert not stop.on_epoch_end(2, {"val_loss": 0.4}, model)
    with pytest.warns(RuntimeWarning, match="inf"):
        stop.on_epoch_end(3, {"val_loss": float("inf")}, model)
    assert stop.best == 0.4


def test_fit_on_no_examples_and_predict_on_an_empty_batch():
    model = simdnn.demos.build_convnet()
    with pytest.raises(ValueError, match="0 examples"):
        simdnn.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()),
                   np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, int),
                   progress=False)  # fmt: skip
    out = simdnn.predict(model, np.zeros((0, 1, 8, 8), np.float32))
    assert out.shape == (0, 10)
    # A mean over no examples is no score: not a loss of 0 (which EarlyStopping would keep as
    # the best ever seen).
    with pytest.raises(ValueError, match="evaluate: x has 0 examples"):
        simdnn.evaluate(model, nn.MSELoss(), np.zeros((0, 1, 8, 8), np.float32),
                        np.zeros((0, 10), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="fit: validation_data has 0 examples"):
        simdnn.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()),
                   np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, int),
                   validation_data=(np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, int)),
                   callbacks=[simdnn.EarlyStopping()], progress=False)  # fmt: skip


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_mixed_precision_model_is_the_same_clear_error_on_both_backends(backend):
    """The error names the layer by its place in the model (of two Linear layers, which) and
    both dtypes, before anything runs."""
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3, dtype=np.float64))
    x = np.ones((2, 4), np.float32)
    words = r"layer '2' \(Linear\) has float64 parameters but the model's first parameter " \
            r"\('0\.weight'\) is float32"  # fmt: skip
    with simdnn.use_backend(backend):
        with pytest.raises(TypeError, match=f"fit: {words}"):
            simdnn.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()), x,
                       np.zeros(2, int), progress=False)  # fmt: skip
        with pytest.raises(TypeError, match=f"predict: {words}"):
            simdnn.predict(model, x)
        with pytest.raises(TypeError, match=f"evaluate: {words}"):
            simdnn.evaluate(model, nn.CrossEntropyLoss(), x, np.zeros(2, int))
    inner = nn.Linear(2, 2)
    inner.bias = nn.Parameter(np.zeros(2))  # float64 in a float32 layer
    with pytest.raises(TypeError, match=r"the model \(Linear\) has float64 parameters"):
        simdnn.predict(inner, np.ones((1, 2), np.float32))


@pytest.mark.parametrize(
    ("missing", "call", "words"),
    [
        ("sklearn", lambda tmp: demos.load_digits_split(), "pip install scikit-learn"),
        ("matplotlib", lambda tmp: demos._plot_vanishing({}, tmp / "v.png"),
         "pip install matplotlib"),
        ("matplotlib", lambda tmp: deep.plot_deep_lab({}, tmp / "d.png"),
         "pip install matplotlib"),
        ("matplotlib", lambda tmp: viz.filters(nn.Conv2d(1, 2, 3), save=tmp / "f.png"),
         "pip install matplotlib"),
    ],
)  # fmt: skip
def test_a_missing_optional_package_names_what_to_install(tmp_path, monkeypatch, missing, call,
                                                         words):  # fmt: skip
    """simdnn has no release on the package index, so a hint such as "simdnn[examples]" would
    install nothing: the messages name the packages themselves."""
    # Importing it now raises ImportError; its submodules too, which an earlier test may have
    # imported (sys.modules answers "sklearn.datasets" without looking at "sklearn").
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ImportError, match=words) as info:
        call(tmp_path)
    assert "simdnn[" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Threads


class Gate(nn.Module):
    """Waits at a barrier inside forward, to force two threads' calls to overlap."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self.barrier = barrier

    def forward(self, x):
        self.barrier.wait(timeout=10)
        return x


def test_predict_does_not_touch_the_shared_train_flag():
    """With the order forced (a prediction inside forward while another thread trains the same
    model), the prediction has dropout off, the training forward has it on, and the model ends
    as it started."""
    barrier = threading.Barrier(2)
    model = nn.Sequential(nn.Linear(8, 8), Gate(barrier), nn.Dropout(0.5))
    model.train()
    x = np.ones((64, 8), np.float32)
    expected = simdnn.predict(nn.Sequential(model[0]), x)
    results = {}

    def predicting():
        results["predict"] = simdnn.predict(model, x)

    t = threading.Thread(target=predicting)
    t.start()
    results["train"] = model(x).data
    t.join(timeout=20)
    np.testing.assert_array_equal(results["predict"], expected)
    assert (results["train"] == 0).mean() > 0.3  # dropout was on in the training thread
    assert model.training
    assert all(m.training for m in model.modules())


def test_concurrent_predictions_are_all_deterministic():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))
    x = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    ref = simdnn.predict(model, x)
    errors = []

    def worker():
        for _ in range(50):
            if not np.array_equal(simdnn.predict(model, x), ref):
                errors.append("differs")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert model.training


def test_use_backend_blocks_in_two_threads_do_not_leak():
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def other():
        with simdnn.use_backend("numpy"):
            seen["other"] = simdnn.get_backend()
            inside.set()
            release.wait(timeout=10)

    t = threading.Thread(target=other)
    with simdnn.use_backend("native"):
        t.start()
        inside.wait(timeout=10)
        seen["main"] = simdnn.get_backend()
        release.set()
        t.join(timeout=10)
    assert seen == {"other": "numpy", "main": "native"}
    assert simdnn.get_backend() == "native"
    simdnn.set_default_backend("numpy")
    try:
        box = []
        t = threading.Thread(target=lambda: box.append(simdnn.get_backend()))
        t.start()
        t.join()
        assert box == ["numpy"]
    finally:
        simdnn.set_default_backend("native")
    with pytest.raises(ValueError, match="unknown backend"):
        simdnn.set_default_backend("gpu")


# ------------------------------------------------------------------------------------------------
# Property: random architectures survive save/load bit for bit

LEAVES = ["linear", "relu", "tanh", "sigmoid", "leaky", "dropout", "bn", "identity", "residual",
          "shared", "tied"]  # fmt: skip


@st.composite
def architectures(draw: st.DrawFn) -> tuple[nn.Module, int]:
    width = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    layers: list[nn.Module] = [nn.Linear(3, width, rng=rng)]
    for kind in draw(st.lists(st.sampled_from(LEAVES), max_size=6)):
        if kind == "linear":
            layers.append(nn.Linear(width, width, bias=draw(st.booleans()), rng=rng))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "tanh":
            layers.append(nn.Tanh())
        elif kind == "sigmoid":
            layers.append(nn.Sigmoid())
        elif kind == "leaky":
            layers.append(nn.LeakyReLU(draw(st.floats(0, 0.5))))
        elif kind == "dropout":
            layers.append(nn.Dropout(draw(st.floats(0, 0.9))))
        elif kind == "bn":
            layers.append(nn.BatchNorm1d(width, momentum=draw(st.sampled_from([0.1, None]))))
        elif kind == "identity":
            layers.append(nn.Identity())
        elif kind == "residual":
            layers.append(nn.Residual(nn.Sequential(nn.Linear(width, width, rng=rng), nn.Tanh())))
        elif kind == "shared":
            layers.append(layers[0] if width == 3 else layers[-1])
        else:  # tied: a new layer holding an earlier layer's weight
            donor = next((m for m in layers if isinstance(m, nn.Linear)
                          and m.weight.shape == (width, width)), None)  # fmt: skip
            fresh = nn.Linear(width, width, rng=rng)
            if donor is not None:
                fresh.weight = donor.weight
            layers.append(fresh)
    model = nn.Sequential(*layers)
    if draw(st.booleans()):
        model.astype(np.float64)
    return model, seed


@given(architectures())
def test_random_architectures_round_trip_bit_exactly(tmp_path_factory, arch):
    model, seed = arch
    x = np.random.default_rng(seed).standard_normal((5, 3)).astype(model.dtype)
    try:
        model.train()
        model(x)  # moves BatchNorm's running statistics
    except ValueError:
        pass  # a shared layer applied to the wrong width: the architecture still round-trips
    path = tmp_path_factory.mktemp("rt") / "m.npz"
    simdnn.save(model, path)
    loaded = simdnn.load(path)
    assert repr(loaded) == repr(model)
    assert loaded.dtype == model.dtype
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    tied_src = [(n, id(p)) for n, p in model.named_parameters()]
    tied_dst = [(n, id(p)) for n, p in loaded.named_parameters()]
    assert [n for n, _ in tied_src] == [n for n, _ in tied_dst]
    assert len({i for _, i in tied_src}) == len({i for _, i in tied_dst})
    model.eval()
    try:
        expected = model(x).data
    except ValueError:
        return
    np.testing.assert_array_equal(loaded(x).data, expected)


def test_use_isa_blocks_in_two_threads_do_not_leak():
    """use_isa is per thread: an overlapping block in another thread neither sees nor keeps
    this thread's choice, and the process default is untouched afterwards."""
    available = simdnn.cpu_info()["available"]
    default = simdnn.get_isa()
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def other():
        with simdnn.use_isa("scalar"):
            seen["other"] = simdnn.get_isa()
            a = np.ones((40, 40), np.float32)
            seen["result"] = simdnn.ops.matmul(a, a)[0, 0]
            inside.set()
            release.wait(timeout=10)
        seen["other after"] = simdnn.get_isa()

    t = threading.Thread(target=other)
    with simdnn.use_isa(available[-1]):
        t.start()
        inside.wait(timeout=10)
        seen["main"] = simdnn.get_isa()
        release.set()
        t.join(timeout=10)
    assert seen["other"] == "scalar"
    assert seen["main"] == available[-1]
    assert seen["other after"] == default
    assert seen["result"] == 40.0
    assert simdnn.get_isa() == default
    with pytest.raises(ValueError, match="unknown ISA"), simdnn.use_isa("sse9"):
        pass
    assert simdnn.get_isa() == default
