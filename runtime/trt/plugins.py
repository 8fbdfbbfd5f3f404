"""The plugin library (libvggt_mv_plugins.so): the one place that finds it and loads it.

Found as: an explicit path, else $VGGT_MV_PLUGINS, else the one plugins/build.py builds
in the source tree (absent on a device that only has runtime/). Loaded through TensorRT's
plugin registry, which is what the ONNX parser and deserialize_cuda_engine consult for
creators; a bare dlopen would register nothing.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

__all__ = ["PLUGIN_LIBRARY_ENV", "LIB_NAME", "PluginLoadError", "resolve_plugin_library",
           "load_plugin_library"]

PLUGIN_LIBRARY_ENV = "VGGT_MV_PLUGINS"
_DEPRECATED_ENV = "VGGT_MV_PLUGINS_LIB"  # older spelling, still read with a warning
LIB_NAME = "libvggt_mv_plugins.so"


class PluginLoadError(RuntimeError):
    """The plugin library is missing or TensorRT refused it."""


def _env_path() -> tuple[str, str] | None:
    value = os.environ.get(PLUGIN_LIBRARY_ENV)
    if value:
        return PLUGIN_LIBRARY_ENV, value
    old = os.environ.get(_DEPRECATED_ENV)
    if old:
        warnings.warn(f"${_DEPRECATED_ENV} is deprecated; set ${PLUGIN_LIBRARY_ENV} instead",
                      FutureWarning, stacklevel=3)
        return _DEPRECATED_ENV, old
    return None


def resolve_plugin_library(explicit: str | Path | None = None) -> Path | None:
    """The library to load, or None when there is none anywhere.

    An explicit or environment path that does not exist is an error rather than a silent
    fallback: loading another library than the one asked for would build or run the
    wrong kernels."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"plugin library not found: {p}")
        return p.resolve()
    env = _env_path()
    if env:
        p = Path(env[1])
        if not p.is_file():
            raise FileNotFoundError(f"${env[0]}={env[1]} does not exist")
        return p.resolve()
    try:
        from plugins.build import built_library  # noqa: PLC0415 - optional source tree
    except ImportError:
        return None
    p = built_library()
    return p.resolve() if p is not None else None


_HANDLES: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()
ALREADY_REGISTERED = "already registered"  # the handle when another route registered them


def _creators_present(registry) -> bool:
    """Whether every contract op already has a creator in ``registry`` (a bare dlopen of
    the library registers them at load time; so does an earlier load_library)."""
    from plugins import contract  # noqa: PLC0415 - stdlib-only contract accessors

    try:
        present = {(c.name, c.plugin_namespace) for c in registry.all_creators}
    except AttributeError:  # an old registry without the listing: trust load_library
        return False
    return all((op, contract.PLUGIN_NAMESPACE) in present for op in contract.op_names())


def load_plugin_library(trt, lib: str | Path) -> Any:
    """Register a library's creators in ``trt``'s process-wide registry, once.

    Idempotent: keyed by the resolved file, so a second session (or another spelling of
    the same path) gets the same handle; and when the creators are already registered
    (the library was dlopened, e.g. by `polygraphy --plugins`, and registered itself at
    load time) load_library is not called, since TensorRT (for RTX) refuses a second
    registration of the same creators."""
    path = str(Path(lib).resolve())
    key = (trt.__name__, path)
    with _LOCK:
        handle = _HANDLES.get(key)
        if handle is None:
            registry = trt.get_plugin_registry()
            if _creators_present(registry):
                handle = ALREADY_REGISTERED
            else:
                handle = registry.load_library(path)
            if handle is None:
                raise PluginLoadError(f"TensorRT could not load the plugin library {lib} "
                                      f"(see the TensorRT log); was it built for this "
                                      f"TensorRT?")
            _HANDLES[key] = handle
        return handle
