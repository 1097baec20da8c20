"""save and load: a model's architecture and weights in one ``.npz`` file, without pickle.

The file holds the architecture as JSON (layer class names and constructor arguments) and one
array per parameter. Loading reads it with ``allow_pickle=False``, so an untrusted file cannot
run code; a truncated or foreign file raises ValueError.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from . import distributed
from .nn.module import LAYER_REGISTRY, Module, Sequential

FORMAT = "simdnn-model"
VERSION = 1
_ARCH_KEY = "__simdnn_architecture__"


def _describe(module: Module) -> dict[str, Any]:
    cls = type(module)
    if LAYER_REGISTRY.get(cls.__name__) is not cls or cls.__module__.split(".")[0] != "simdnn":
        raise TypeError(
            f"save: cannot describe {cls.__name__}, which is not a simdnn layer; save its "
            "state_dict() with numpy.savez instead"
        )
    if isinstance(module, Sequential):
        return {"class": "Sequential", "layers": [_describe(m) for m in module]}
    return {"class": cls.__name__, "config": module.config()}


def _build(desc: Any) -> Module:
    if not isinstance(desc, dict) or "class" not in desc:
        raise ValueError(f"load: malformed architecture entry {desc!r}")
    name = desc["class"]
    cls = LAYER_REGISTRY.get(name)
    if cls is None or cls.__module__.split(".")[0] != "simdnn":
        raise ValueError(f"load: unknown layer class {name!r}")
    if cls is Sequential:
        return Sequential(*(_build(d) for d in desc.get("layers", [])))
    config = desc.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"load: malformed config for {name}: {config!r}")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return cls(**config)


def save(model: Module, path: str | os.PathLike[str]) -> None:
    """Write the architecture and weights of a model built from simdnn layers to `path`.

    In a distributed job (:mod:`simdnn.distributed`) only rank 0 writes; call
    ``simdnn.distributed.barrier()`` before other ranks read the file."""
    arch = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": str(model.dtype),
        "model": _describe(model),
    }
    # distributed: in a job of several ranks only rank 0 writes (the ranks hold the same weights)
    if not distributed._main_or_single():
        return
    arrays = {f"param:{k}": v for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        np.savez(f, **{_ARCH_KEY: np.array(json.dumps(arch))}, **arrays)


def load(path: str | os.PathLike[str]) -> Module:
    """Rebuild a model saved by :func:`save`. Raises ValueError for files that are not one."""
    name = repr(os.fspath(path))
    # The file is opened here (not by np.load) so that it is closed whatever goes wrong.
    with open(path, "rb") as f:
        try:
            with np.load(f, allow_pickle=False) as data:
                if _ARCH_KEY not in data.files:
                    raise ValueError(f"load: {name} is not a simdnn model file")
                arch = json.loads(str(data[_ARCH_KEY]))
                if not isinstance(arch, dict) or arch.get("format") != FORMAT:
                    raise ValueError(f"load: {name} is not a simdnn model file")
                if arch.get("version") != VERSION:
                    raise ValueError(
                        f"load: {name} has format version {arch.get('version')}, this simdnn "
                        f"reads version {VERSION}"
                    )
                model = _build(arch["model"])
                model.astype(arch.get("dtype", "float32"))
                state = {k[len("param:") :]: data[k] for k in data.files if k.startswith("param:")}
                model.load_state_dict(state)
                return model
        except ValueError as err:
            if str(err).startswith("load:"):
                raise
            raise ValueError(f"load: {name} is not a readable simdnn model file ({err})") from err
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError) as err:
            raise ValueError(f"load: {name} is not a readable simdnn model file ({err})") from err
