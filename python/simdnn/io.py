"""save and load: a model's architecture and weights in one ``.npz`` file, without pickle.

The file holds the architecture as JSON (built-in layer class names, constructor arguments and
children; a module used twice as a reference to its first place; tied parameters as a map from
each later name to the stored one) and one array per parameter and buffer, tied ones once.
Writing is atomic: the file goes to a temporary name in the same folder, is flushed to disk,
then replaces the target, so a failed write (a full disk) never leaves a fragment where the
previous checkpoint was. Loading trusts nothing: it reads no pickle, builds the declared
architecture without memory first (see :func:`simdnn.nn.module.meta_build`), checks every entry's
name, shape and dtype from its header against it, and only then allocates the model and reads
the arrays, each once; a truncated, foreign or inconsistent file raises ValueError, and memory
stays within a small multiple of the model's own size.

A model of your own class (a ``Module`` subclass with its own ``forward``) is saved the same way
but without an architecture: rebuild it in code and restore the weights with
``model.load_state_dict(simdnn.load_state_dict(path))``, as in PyTorch; with no architecture to
check the arrays against, that reads at most 32 times the file's size unless told otherwise
(its ``max_bytes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import zipfile
from collections import OrderedDict
from typing import IO, Any, Literal

import numpy as np

from . import distributed
from .nn.module import (
    LAYER_REGISTRY,
    Module,
    ModuleDict,
    ModuleList,
    Sequential,
    check_count_range,
    meta_build,
)

FORMAT = "simdnn-model"
VERSION = 2
_READABLE = (1, 2)
_ARCH_KEY = "__simdnn_architecture__"
_PREFIX = "param:"
# The architecture is a few KB of JSON; refuse to read more than this before parsing it.
_ARCH_LIMIT = 16 << 20
# Deeper nesting than any real model has; JSON this deep is refused before it is built.
_DEPTH_LIMIT = 200
# load_state_dict has no architecture to check the arrays against, so by default it reads no
# more than this many times the file's size (and at least _STATE_FLOOR bytes): save stores the
# arrays uncompressed, and even recompressed weights shrink a few times at most, but a
# compressed entry of zeros (or entries sharing compressed data) inflates a thousand times
# and more.
_STATE_RATIO = 32
_STATE_FLOOR = 64 << 20


def _builtin(cls: type) -> bool:
    return LAYER_REGISTRY.get(cls.__name__) is cls


def _describe(module: Module, path: str, places: dict[int, str]) -> dict[str, Any] | None:
    """The JSON description of a module tree, or None when a class in it is not built in."""
    if id(module) in places:
        return {"ref": places[id(module)]}
    places[id(module)] = path
    cls = type(module)
    if not _builtin(cls):
        return None
    desc: dict[str, Any] = {"class": cls.__name__}
    config = module.config()
    if config:
        desc["config"] = config
    if module._modules:
        children = {}
        for name, child in module._modules.items():
            sub = _describe(child, f"{path}.{name}" if path else name, places)
            if sub is None:
                return None
            children[name] = sub
        desc["children"] = children
    return desc


def _tied(model: Module) -> dict[str, str]:
    """Later name -> first name of every parameter held under two names by different modules."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for mod_name, mod in model.named_modules():
        for pname, p in mod._params.items():
            full = f"{mod_name}.{pname}" if mod_name else pname
            if id(p) in first:
                tied[full] = first[id(p)]
            else:
                first[id(p)] = full
    return tied


def _build(desc: Any, path: str, places: dict[str, Module], depth: int = 0) -> Module:
    if depth > _DEPTH_LIMIT:
        raise ValueError(f"load: the architecture is nested more than {_DEPTH_LIMIT} levels deep")
    if not isinstance(desc, dict):
        raise ValueError(f"load: malformed architecture entry {desc!r}")
    if "ref" in desc:
        target = places.get(desc["ref"]) if isinstance(desc["ref"], str) else None
        if target is None:
            raise ValueError(f"load: reference to an unknown module {desc['ref']!r}")
        return target
    name = desc.get("class")
    cls = LAYER_REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"load: unknown layer class {name!r}")
    config = desc.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"load: malformed config for {name}: {config!r}")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    raw_children = desc.get("children", {})
    if "layers" in desc:  # version 1: a Sequential's list of layers
        raw_children = {str(i): d for i, d in enumerate(desc["layers"])}
    if not isinstance(raw_children, dict):
        raise ValueError(f"load: malformed children for {name}: {raw_children!r}")
    children: OrderedDict[str, Module] = OrderedDict()
    # The module's own place is taken before its children are built, so that a child can refer
    # to an earlier sibling but never to its own ancestor.
    for key, sub in raw_children.items():
        if not isinstance(key, str):
            raise ValueError(f"load: malformed child name {key!r}")
        children[key] = _build(sub, f"{path}.{key}" if path else key, places, depth + 1)
    try:
        if cls is Sequential:
            module: Module = Sequential(*children.values())
        elif cls is ModuleList:
            module = ModuleList(children.values())
        elif cls is ModuleDict:
            module = ModuleDict(children)
        elif children:
            module = cls(**config, **children)
        else:
            module = cls(**config)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"load: cannot build {name} from {config!r}: {err}") from err
    places[path] = module
    return module


def _retie(model: Module, tied: dict[str, str]) -> None:
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for later, first in tied.items():
        owner, _, pname = later.rpartition(".")
        mod = modules.get(owner)
        if first not in params or mod is None or pname not in mod._params:
            raise ValueError(f"load: tied parameter {later!r} -> {first!r} does not exist")
        # Tying replaces the layer's own parameter: one of another shape or dtype would load and
        # only fail at the first forward (or, worse, broadcast), so it is refused here.
        own, shared = mod._params[pname].data, params[first].data
        if own.shape != shared.shape or own.dtype != shared.dtype:
            raise ValueError(
                f"load: tied parameter {later!r} -> {first!r}: {later!r} needs shape "
                f"{own.shape} and dtype {own.dtype}, {first!r} has shape {shared.shape} and "
                f"dtype {shared.dtype}"
            )
        setattr(mod, pname, params[first])


def _create_temp(folder: str) -> tuple[int, str]:
    """A new file in `folder` open for writing, created with mode 0o666 so that the kernel
    applies the process's umask, as a plain open() would. (tempfile.mkstemp makes it private,
    and reading the umask back takes os.umask, which sets it for every thread at once.)"""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".simdnn-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"save: no free temporary file name in {folder!r}")


def _write_atomic(path: str | os.PathLike[str], write: Any) -> None:
    """write(file) into a temporary file beside `path`, fsync it, then rename it over `path`."""
    # A symlink is followed, so that saving over it updates the file it points to (as a plain
    # open() would) instead of replacing the link with a file.
    target = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(target)
    fd, tmp = _create_temp(folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:  # a file being replaced keeps its permissions; a new one has the umask's
            mode = os.stat(target).st_mode & 0o777
        except FileNotFoundError:
            pass
        else:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(model: Module, path: str | os.PathLike[str]) -> None:
    """Write the architecture (when every layer is built in) and the weights of a model, atomically:
    the previous file at `path` stays intact until the new one is complete on disk. A file
    that is replaced keeps its permissions, a new one gets those the umask gives, and a
    symbolic link at `path` is followed: the file it points to is replaced, the link kept.

    In a distributed job (:mod:`simdnn.distributed`) only rank 0 writes; call
    ``simdnn.distributed.barrier()`` before other ranks read the file."""
    if not isinstance(model, Module):
        raise TypeError(f"save: expected a Module, got {type(model).__name__}")
    model_desc = _describe(model, "", {})
    arch = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": str(model.dtype),
        "model": model_desc,
        "tied": _tied(model),
    }
    # distributed: in a job of several ranks only rank 0 writes (the ranks hold the same weights)
    if not distributed._main_or_single():
        return
    arrays = {f"{_PREFIX}{k}": v for k, v in model.state_dict().items()}
    _write_atomic(path, lambda f: np.savez(f, **{_ARCH_KEY: np.array(json.dumps(arch))}, **arrays))


class _Entry:
    """One array of the file, known from its .npy header only."""

    def __init__(self, zf: zipfile.ZipFile, member: str, where: str) -> None:
        self.zf, self.member = zf, member
        info = zf.getinfo(member)
        with zf.open(member) as m:
            try:
                version = np.lib.format.read_magic(m)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(m)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(m)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except (ValueError, OSError, EOFError, SyntaxError) as err:
                raise ValueError(
                    f"load: {where}: entry {member!r} has a bad header ({err})"
                ) from err
            offset = m.tell()
        self.shape, self.fortran, self.dtype = header
        if self.dtype.hasobject:
            raise ValueError(f"load: {where}: entry {member!r} holds Python objects")
        nbytes = int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize
        self.nbytes = nbytes
        if info.file_size != offset + nbytes:
            raise ValueError(
                f"load: {where}: entry {member!r} declares {nbytes} bytes of data but holds "
                f"{info.file_size - offset} (a truncated or inconsistent file)"
            )

    def read(self) -> np.ndarray:
        with self.zf.open(self.member) as m:
            return np.lib.format.read_array(m, allow_pickle=False)


def _open(f: IO[bytes], where: str) -> tuple[zipfile.ZipFile, dict[str, Any], dict[str, _Entry]]:
    """The zip, the architecture and the state entries (headers only) of a model file."""
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ValueError(f"load: {where} is not a readable simdnn model file ({err})") from err
    names = zf.namelist()
    arch_member = _ARCH_KEY + ".npy"
    if arch_member not in names:
        raise ValueError(f"load: {where} is not a simdnn model file")
    if zf.getinfo(arch_member).file_size > _ARCH_LIMIT:
        raise ValueError(
            f"load: {where}: the architecture entry is larger than {_ARCH_LIMIT} bytes"
        )
    arch_entry = _Entry(zf, arch_member, where)
    if arch_entry.dtype.kind != "U" or arch_entry.shape != ():
        raise ValueError(f"load: {where} is not a simdnn model file (bad architecture entry)")
    try:
        arch = json.loads(str(arch_entry.read()))
    except RecursionError as err:
        raise ValueError(f"load: {where}: the architecture is nested too deeply") from err
    except ValueError as err:
        raise ValueError(f"load: {where}: the architecture is not valid JSON ({err})") from err
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ValueError(f"load: {where} is not a simdnn model file")
    if arch.get("version") not in _READABLE:
        raise ValueError(
            f"load: {where} has format version {arch.get('version')!r}, this simdnn reads "
            f"versions {_READABLE}"
        )
    entries: dict[str, _Entry] = {}
    for member in names:
        if member == arch_member:
            continue
        if not (member.startswith(_PREFIX) and member.endswith(".npy")):
            raise ValueError(f"load: {where}: unexpected entry {member!r}")
        entries[member[len(_PREFIX) : -len(".npy")]] = _Entry(zf, member, where)
    return zf, arch, entries


def _check_entries(expected: dict[str, np.ndarray], entries: dict[str, _Entry], where: str) -> None:
    """Every expected array present with its shape and a compatible dtype, and nothing else."""
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"load: {where} does not match its architecture: missing entries {missing}, "
            f"unexpected {unexpected}"
        )
    for name, target in expected.items():
        e = entries[name]
        if e.shape != target.shape:
            raise ValueError(
                f"load: {where}: entry {name!r} has shape {e.shape}, the architecture needs "
                f"{target.shape}"
            )
        want = "f" if target.dtype.kind == "f" else "iu"
        if e.dtype.kind not in want:
            raise ValueError(
                f"load: {where}: entry {name!r} has dtype {e.dtype}, expected "
                f"{'floating-point' if want == 'f' else 'integer'} values"
            )


def _state_targets(model: Module) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {n: p.data for n, p in model.named_parameters()}
    out.update(model.named_buffers())
    return out


def _build_model(arch: dict[str, Any], where: str) -> Module:
    desc = arch.get("model")
    if desc is None:
        raise ValueError(
            f"load: {where} holds the weights of a model of your own class; build the model in "
            "code and call model.load_state_dict(simdnn.load_state_dict(path))"
        )
    tied = arch.get("tied", {})
    if not isinstance(tied, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tied.items()
    ):
        raise ValueError(f"load: {where}: malformed tied-parameter map {tied!r}")
    dtype = arch.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"load: {where}: unsupported dtype {dtype!r}")
    try:
        model = _build(desc, "", {})
        _retie(model, tied)
        model.astype(dtype)
    except ValueError as err:
        if str(err).startswith("load:"):
            raise
        raise ValueError(f"load: {where}: {err}") from err
    except (TypeError, RecursionError, AttributeError, KeyError) as err:
        raise ValueError(f"load: {where} is not a valid simdnn model file ({err})") from err
    return model


def _fill(model: Module, entries: dict[str, _Entry], where: str) -> None:
    for name, target in _state_targets(model).items():
        value = entries[name].read()
        check_count_range(value, target.dtype, f"load: {where}: entry {name!r}")
        target[...] = value


def _state_limit(max_bytes: Any, file_size: int) -> int | None:
    if max_bytes is None:
        return None
    if isinstance(max_bytes, str) and max_bytes == "auto":
        return max(_STATE_FLOOR, _STATE_RATIO * file_size)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(
            f"load_state_dict: max_bytes must be an int, 'auto' or None, got {max_bytes!r}"
        )
    if max_bytes < 0:
        raise ValueError(f"load_state_dict: max_bytes must be >= 0, got {max_bytes}")
    return int(max_bytes)


def load_state_dict(
    path: str | os.PathLike[str], max_bytes: int | Literal["auto"] | None = "auto"
) -> OrderedDict[str, np.ndarray]:
    """The parameters and buffers stored by :func:`save`, by name: restore a model of your own
    class with ``model.load_state_dict(simdnn.load_state_dict(path))``. Entries holding
    anything but real numbers (complex, strings, dates, objects) raise ValueError.

    max_bytes: the most bytes of arrays to read, checked against the sizes the entries declare
    before anything is read, so that a small file that would inflate to gigabytes (a
    compressed entry of zeros) raises ValueError instead of filling memory. "auto" (the
    default) allows 32 times the file's size, and at least 64 MiB: every file save writes
    passes (it stores the arrays uncompressed). An int sets the limit; None reads whatever the
    file declares, for a trusted file compressed further than that.
    """
    where = repr(os.fspath(path))
    with open(path, "rb") as f:
        limit = _state_limit(max_bytes, os.fstat(f.fileno()).st_size)
        zf, _, entries = _open(f, where)
        with zf:
            for name, e in entries.items():
                if e.dtype.kind not in "fiu":
                    raise ValueError(f"load: {where}: entry {name!r} has dtype {e.dtype}")
            total = sum(e.nbytes for e in entries.values())
            if limit is not None and total > limit:
                raise ValueError(
                    f"load_state_dict: {where} declares {total} bytes of arrays, more than "
                    f"max_bytes={max_bytes!r} allows ({limit}); pass a larger max_bytes, or "
                    "max_bytes=None, to read it if you trust the file"
                )
            return OrderedDict((name, e.read()) for name, e in entries.items())


def load(path: str | os.PathLike[str]) -> Module:
    """Rebuild a model saved by :func:`save` (built-in layers and containers, shared modules and
    tied weights included), in evaluation mode: call ``model.train()`` (fit does) to train it
    further. Raises ValueError for files that are not one, and for models of a user class
    (rebuild those in code and use :func:`load_state_dict`)."""
    where = repr(os.fspath(path))
    # The file is opened here (not by np.load) so that it is closed whatever goes wrong.
    with open(path, "rb") as f:
        zf, arch, entries = _open(f, where)
        with zf:
            with meta_build():  # the declared architecture, without its memory
                skeleton = _build_model(arch, where)
            _check_entries(_state_targets(skeleton), entries, where)
            model = _build_model(arch, where)
            try:
                _fill(model, entries, where)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                if str(err).startswith("load:"):
                    raise
                raise ValueError(
                    f"load: {where} is not a readable simdnn model file ({err})"
                ) from err
    return model.eval()
