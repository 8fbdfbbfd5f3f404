"""The plugin library (libvggt_mv_plugins.so): the one place that finds it and loads it.

Found as: an explicit path, else $VGGT_MV_PLUGINS, else the one plugins/build.py builds
in the source tree (absent on a device that only has runtime/). Loaded through TensorRT's
plugin registry, which is what the ONNX parser and deserialize_cuda_engine consult for
creators, once per process and file (see load_plugin_library for what "once" checks).
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
ALREADY_REGISTERED = "already registered"  # handle where the process map cannot be read


def _contract_creators() -> set[tuple[str, str, str]]:
    """(name, version, namespace) of every creator the plugin contract declares."""
    from plugins import contract  # noqa: PLC0415 - stdlib-only contract accessors

    return {(op, str(contract.plugin_version(op)), contract.PLUGIN_NAMESPACE)
            for op in contract.op_names()}


def _registered(registry, wanted: set[tuple[str, str, str]]) -> set[tuple[str, str, str]] | None:
    """Which of ``wanted`` the registry already holds; None for an old registry that
    cannot list its creators (then load_library is trusted to refuse duplicates)."""
    try:
        creators = list(registry.all_creators)
    except AttributeError:
        return None
    have = {(str(c.name), str(c.plugin_version), str(c.plugin_namespace)) for c in creators}
    return wanted & have


def _loaded_in_process(path: str) -> bool | None:
    """Whether ``path`` (compared by device and inode, so any spelling counts) is mapped
    into this process; None where /proc/self/maps cannot be read (not Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
        want = os.stat(path)
    except OSError:
        return None
    seen: set[str] = set()
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[5] not in seen:
            seen.add(parts[5])
            try:
                st = os.stat(parts[5])
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                return True
    return False


def _keep_loaded(path: str) -> Any:
    """A handle on an already-loaded library (RTLD_NOLOAD: never a second load), kept so
    the library stays mapped for the life of the process."""
    import ctypes  # noqa: PLC0415

    try:
        return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
    except (OSError, AttributeError):
        return ALREADY_REGISTERED


def load_plugin_library(trt, lib: str | Path) -> Any:
    """Register a library's creators in ``trt``'s process-wide registry, once.

    Idempotent: keyed by the resolved file, so a second session (or another spelling of
    the same path) gets the same handle and nothing is registered twice. When the
    contract's creators are already in the registry, load_library is not called (TensorRT
    for RTX refuses a second registration: "exists already"), provided they came from
    this very file, i.e. it is mapped into the process (a bare dlopen, e.g. `polygraphy
    --plugins`, registers at load time; so does an earlier load_library). Creators that
    came from anything else (another build of the library, the Python contract creators)
    are an error: the engine would be built or run with other code than the sidecar's
    sha256 names."""
    path = str(Path(lib).resolve())
    key = (trt.__name__, path)
    with _LOCK:
        handle = _HANDLES.get(key)
        if handle is not None:
            return handle
        registry = trt.get_plugin_registry()
        wanted = _contract_creators()
        present = _registered(registry, wanted)
        if present:
            loaded = _loaded_in_process(path)
            if present != wanted:
                raise PluginLoadError(
                    f"the plugin registry already holds {sorted(present)} but not "
                    f"{sorted(wanted - present)}: another library registered part of the "
                    f"contract's creators; load only {path} in this process")
            if loaded is False:
                raise PluginLoadError(
                    f"the plugin registry already holds the vggt_mv creators, but not from "
                    f"{path} (another build of the library, or the Python contract creators, "
                    f"was loaded first in this process); load one plugin library per process "
                    f"(check --plugins / ${PLUGIN_LIBRARY_ENV})")
            handle = _keep_loaded(path) if loaded else ALREADY_REGISTERED
        else:
            handle = registry.load_library(path)
        if handle is None:
            raise PluginLoadError(f"TensorRT could not load the plugin library {lib} "
                                  f"(see the TensorRT log); was it built for this "
                                  f"TensorRT?")
        _HANDLES[key] = handle
        return handle
