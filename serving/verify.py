"""`serve`'s check of a model repository before tritonserver sees it.

Triton answers a foreign folder or a garbled config.pbtxt with pages of log and "failed to
load all models", and it loads whatever files and plugin libraries the repository names.
So, before the server starts: the folder must be an export-triton repository
(serving.json), every config.pbtxt must pass the strict parser (serving/pbtxt.py: the
file and line are named), every path in serving.json or a config must stay inside the
repository (runtime.layout.inside), and the graphs, engines and plugin libraries must be
the bytes export-triton copied (sha256 against the bucket's manifest and the index).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.layout import (MANIFEST, PORTABLE_GRAPH, ManifestError, graph_records, inside,
                            load_manifest, verify_artifacts)

from .pbtxt import ConfigError, parse_pbtxt, validate_config
from .repository import BUCKET_DIR, INDEX, RepositoryError

__all__ = ["verify_repository", "MODEL_KINDS"]

MODEL_KINDS = ("pipeline", "onnx", "trt")
_REMEDY = "write the repository again with `python cli.py export-triton`"


def _index(repo: Path) -> dict[str, Any]:
    path = repo / INDEX
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist; write one with "
                              f"`python cli.py export-triton --bucket DIR --out {repo}`")
    if not path.is_file():
        raise RepositoryError(f"{repo} is not a repository written by export-triton (no "
                              f"{INDEX}); {_REMEDY}")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RepositoryError(f"{path} is corrupt ({e}); {_REMEDY}") from e
    buckets = index.get("buckets") if isinstance(index, dict) else None
    if not isinstance(buckets, list) or not all(isinstance(b, dict) for b in buckets):
        raise RepositoryError(f"{path} has no list of buckets; {_REMEDY}")
    if not buckets:
        raise RepositoryError(f"{path} lists no buckets; {_REMEDY}")
    return index


def _config(repo: Path, folder: Path) -> dict[str, Any]:
    path = folder / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(f"{path} is missing; {_REMEDY}")
    try:
        cfg = validate_config(parse_pbtxt(path.read_text()))
    except UnicodeDecodeError as e:
        raise RepositoryError(f"{path} is not text ({e}); {_REMEDY}") from e
    except ConfigError as e:
        raise RepositoryError(f"{path}: {e}; Triton would refuse it. {_REMEDY}, or fix "
                              f"that line") from e
    if cfg["name"] != folder.name:
        raise RepositoryError(f"{path}: name {cfg['name']!r} is not its folder's name "
                              f"{folder.name!r} (Triton requires both to agree); {_REMEDY}")
    return cfg


def _check_pipeline(repo: Path, folder: Path, cfg: dict[str, Any]) -> Path:
    """The Python model: its copied bucket's graph against that bucket's manifest, and
    its own parameters' paths inside its folder. Returns the copied bucket folder."""
    version = folder / "1"
    bucket = version / BUCKET_DIR
    try:
        manifest = load_manifest(bucket)
        verify_artifacts(bucket, graph_records(bucket, manifest, PORTABLE_GRAPH),
                         remedy=_REMEDY)
    except (ManifestError, FileNotFoundError) as e:
        raise RepositoryError(str(e)) from e
    params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", [])}
    cfg_path = folder / "config.pbtxt"
    if params.get("plugins"):
        inside(version, params["plugins"], source=cfg_path, key="parameters.plugins")
    for p in filter(None, params.get("extra_sys_path", "").split(os.pathsep)):
        inside(repo, p, source=cfg_path, key="parameters.extra_sys_path")
    return bucket


def verify_repository(repo: str | Path) -> dict[str, Any]:
    """Refuse (RepositoryError / runtime.layout.PathEscapeError, naming the file) a
    repository tritonserver should not be started on; returns its serving.json index."""
    repo = Path(repo)
    index = _index(repo)
    source = repo / INDEX
    for i, b in enumerate(index["buckets"]):
        folders: dict[str, Path] = {}
        for kind in MODEL_KINDS:
            name = b.get(kind)
            if not name:
                continue
            key = f"buckets[{i}].{kind}"
            if inside(repo, name, source=source, key=key).parent != repo.resolve():
                raise RepositoryError(f"{source}: {key} = {name!r} is not a model folder "
                                      f"at the top of {repo}; {_REMEDY}")
            folder = repo / str(name)
            if not folder.is_dir():
                raise RepositoryError(f"{source}: {key} names model {name!r}, but {repo} "
                                      f"has no folder {name}; {_REMEDY}")
            folders[kind] = folder
        if "pipeline" not in folders:
            raise RepositoryError(f"{source}: buckets[{i}] names no Python model; {_REMEDY}")
        cfgs = {k: _config(repo, f) for k, f in folders.items()}
        bucket = _check_pipeline(repo, folders["pipeline"], cfgs["pipeline"])
        if "onnx" in folders:
            # the onnxruntime model's own copy, against the same manifest
            v = folders["onnx"] / "1"
            try:
                verify_artifacts(v, graph_records(bucket, load_manifest(bucket),
                                                  PORTABLE_GRAPH), remedy=_REMEDY,
                                 record=bucket / MANIFEST)
            except ManifestError as e:
                raise RepositoryError(str(e)) from e
        if b.get("trt_plugins"):
            inside(repo, b["trt_plugins"], source=source, key=f"buckets[{i}].trt_plugins")
        # the engine and plugin library as export-triton copied them (size, sha256)
        try:
            verify_artifacts(repo, list(b.get("files") or []), remedy=_REMEDY, record=source)
        except ManifestError as e:
            raise RepositoryError(str(e)) from e
    return index
