"""save and load: a model's architecture and weights in one ``.npz`` file, without pickle.

The file holds the architecture as JSON (built-in layer class names, constructor arguments and
children; a module used twice as a reference to its first place; tied parameters as a map from
each later name to the stored one) and one array per parameter and buffer, tied ones once.
Loading reads it with ``allow_pickle=False``, so an untrusted file cannot run code; a truncated
or foreign file raises ValueError.

A model of your own class (a ``Module`` subclass with its own ``forward``) is saved the same way
but without an architecture: rebuild it in code and restore the weights with
``model.load_state_dict(simdnn.load_state_dict(path))``, as in PyTorch.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from .nn.module import LAYER_REGISTRY, Module, ModuleDict, ModuleList, Sequential

FORMAT = "simdnn-model"
VERSION = 2
_READABLE = (1, 2)
_ARCH_KEY = "__simdnn_architecture__"
_PREFIX = "param:"


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


def _build(desc: Any, path: str, places: dict[str, Module]) -> Module:
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
        children[key] = _build(sub, f"{path}.{key}" if path else key, places)
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
    except (TypeError, ValueError) as err:
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
        setattr(mod, pname, params[first])


def save(model: Module, path: str | os.PathLike[str]) -> None:
    """Write the architecture (when every layer is built in) and the weights of a model."""
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
    arrays = {f"{_PREFIX}{k}": v for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        np.savez(f, **{_ARCH_KEY: np.array(json.dumps(arch))}, **arrays)


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], OrderedDict[str, np.ndarray]]:
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
                if arch.get("version") not in _READABLE:
                    raise ValueError(
                        f"load: {name} has format version {arch.get('version')}, this simdnn "
                        f"reads versions {_READABLE}"
                    )
                state = OrderedDict(
                    (k[len(_PREFIX) :], data[k]) for k in data.files if k.startswith(_PREFIX)
                )
                return arch, state
        except ValueError as err:
            if str(err).startswith("load:"):
                raise
            raise ValueError(f"load: {name} is not a readable simdnn model file ({err})") from err
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError) as err:
            raise ValueError(f"load: {name} is not a readable simdnn model file ({err})") from err


def load_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, np.ndarray]:
    """The parameters and buffers stored by :func:`save`, by name: restore a model of your own
    class with ``model.load_state_dict(simdnn.load_state_dict(path))``."""
    return _read(path)[1]


def load(path: str | os.PathLike[str]) -> Module:
    """Rebuild a model saved by :func:`save` (built-in layers and containers, shared modules and
    tied weights included). Raises ValueError for files that are not one, and for models of a
    user class (rebuild those in code and use :func:`load_state_dict`)."""
    arch, state = _read(path)
    name = repr(os.fspath(path))
    if arch.get("model") is None:
        raise ValueError(
            f"load: {name} holds the weights of a model of your own class; build the model in "
            "code and call model.load_state_dict(simdnn.load_state_dict(path))"
        )
    try:
        model = _build(arch["model"], "", {})
        tied = arch.get("tied", {})
        if not isinstance(tied, dict):
            raise ValueError(f"load: malformed tied-parameter map {tied!r}")
        _retie(model, tied)
        dtype = arch.get("dtype", "float32")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"load: unsupported dtype {dtype!r}")
        model.astype(dtype)
        model.load_state_dict(state)
    except ValueError as err:
        if str(err).startswith("load:"):
            raise
        raise ValueError(f"load: {name}: {err}") from err
    except (TypeError, RecursionError, AttributeError) as err:
        raise ValueError(f"load: {name} is not a valid simdnn model file ({err})") from err
    return model
