"""One weights file for every bucket of a model: a canonical layout, a content-addressed
store under the export root, and a hard link of it in each bucket.

torch.onnx writes each bucket's external data in trace order, under names that differ
between buckets (constants folded from weights are called val_889 in one trace and
val_891 in the next), so the bucket files differ although they hold the same weights.
``share_weights`` rewrites them into one layout that depends on the weights only:

- shared: every initializer whose bytes equal a tensor of the model's state dict, or the
  transpose of a 2-D one (the optimizer folds Transpose(weight) into a constant). Those
  bytes are the same in every bucket of the model.
- bucket-only: everything else (position embeddings interpolated to the bucket's size,
  token tensors expanded to its frame count): kept inside the graph proto, where they
  were measured to be kilobytes to megabytes.
- layout: the distinct shared tensors sorted by the sha256 of their bytes, each at an
  offset aligned to ALIGNMENT; two initializers with equal bytes point at one copy.

The data file keeps its per-bucket name (model.onnx.data) because onnx and onnxruntime
refuse external-data paths that leave the graph's folder; the copy in STORE_DIR is a hard
link to it, and the next bucket with the same sha256 links to that instead of keeping
its own. Where hard links fail (another file system) the bucket keeps its own copy.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from runtime.layout import EXTERNAL_DATA_SUFFIX, PORTABLE_GRAPH

DATA_FILE = PORTABLE_GRAPH + EXTERNAL_DATA_SUFFIX
STORE_DIR = "weights"          # under the export root, next to the bucket folders
ALIGNMENT = 64
LAYOUT = {"order": "sha256 of each distinct tensor's bytes", "alignment": ALIGNMENT,
          "shared": "state-dict tensors and transposes of 2-D ones"}


def weight_hashes(model: Any) -> set[str]:
    """sha256 of the bytes of every state-dict tensor and of each 2-D one transposed: the
    initializers that may go into the shared file. Computed once per export."""
    out: set[str] = set()
    for t in model.state_dict().values():
        a = t.detach().cpu().contiguous().numpy()
        out.add(hashlib.sha256(a.tobytes()).hexdigest())
        if a.ndim == 2:
            out.add(hashlib.sha256(np.ascontiguousarray(a.T).tobytes()).hexdigest())
    return out


class _Reader:
    """Bytes of an initializer wherever they are (inline, or in the folder's data file)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, Any] = {}

    def read(self, t: onnx.TensorProto) -> bytes:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        info = {e.key: e.value for e in t.external_data}
        f = self.files.get(info["location"])
        if f is None:
            f = self.files[info["location"]] = open(self.folder / info["location"], "rb")
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _set_external(t: onnx.TensorProto, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                  "uint64_data", "string_data"):
        t.ClearField(field)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def _set_inline(t: onnx.TensorProto, data: bytes) -> None:
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = data


@dataclass
class SharedLayout:
    sha256: str
    bytes: int
    tensors: int            # initializers (of the first graph) pointing into the file
    unique_tensors: int
    bucket_only_bytes: int  # initializer bytes kept inside the graph proto

    def record(self) -> dict[str, Any]:
        return {"name": DATA_FILE, "bytes": self.bytes, "sha256": self.sha256,
                "tensors": self.tensors, "unique_tensors": self.unique_tensors,
                "bucket_only_bytes": self.bucket_only_bytes, "layout": LAYOUT}


def write_canonical(folder: Path, graphs: Iterable[str], known: set[str]) -> SharedLayout:
    """Rewrites ``folder``'s graphs and their data file into the canonical layout (see the
    module docstring). The graphs are re-saved in place; the old data file is replaced
    only after every tensor was read from it."""
    names = list(graphs)
    models = [onnx.load(str(folder / g), load_external_data=False) for g in names]
    reader = _Reader(folder)
    digests: dict[str, tuple[onnx.TensorProto, int]] = {}  # sha -> (a source, length)
    plan: list[list[tuple[onnx.TensorProto, str | None, bytes | None]]] = []
    inline_bytes = 0
    try:
        for gi, m in enumerate(models):
            rows = []
            for t in m.graph.initializer:
                data = reader.read(t)
                sha = hashlib.sha256(data).hexdigest()
                if sha in known:
                    digests.setdefault(sha, (t, len(data)))
                    rows.append((t, sha, None))
                else:
                    rows.append((t, None, data))
                    inline_bytes += len(data) if gi == 0 else 0
            plan.append(rows)
        offsets: dict[str, int] = {}
        tmp = folder / f".{DATA_FILE}.canonical"
        h, pos = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            for sha in sorted(digests):
                pad = (-pos) % ALIGNMENT
                if pad:
                    out.write(b"\0" * pad)
                    h.update(b"\0" * pad)
                    pos += pad
                src, length = digests[sha]
                data = reader.read(src)
                out.write(data)
                h.update(data)
                offsets[sha] = pos
                pos += length
            out.flush()
            os.fsync(out.fileno())
    finally:
        reader.close()
    for rows in plan:
        for t, sha, data in rows:
            if sha is None:
                _set_inline(t, data)
            else:
                _set_external(t, offsets[sha], digests[sha][1])
    os.replace(tmp, folder / DATA_FILE)
    for g, m in zip(names, models):
        onnx.save(m, str(folder / g))
    return SharedLayout(h.hexdigest(), pos, sum(s is not None for _, s, _ in plan[0]),
                        len(digests), inline_bytes)


def _read_only(path: Path) -> None:
    # The file is every bucket's at once: a writer that opens it in place (onnx's
    # external-data writer does, with r+b) must fail instead of changing all of them.
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o444 & ~mask)


def link_into_store(folder: Path, layout: SharedLayout, root: Path,
                    log: Callable[[str], None] = print) -> str | None:
    """Makes ``folder``'s data file the store's copy: a hard link to the store's file of
    the same sha256 when there is one, else the first copy of the store. Returns the
    store path relative to ``root``, or None where hard links fail (the bucket keeps its
    own copy, which works the same, only costs the disk)."""
    store = root / STORE_DIR
    entry = store / f"{layout.sha256}{EXTERNAL_DATA_SUFFIX}"
    mine = folder / DATA_FILE
    _read_only(mine)
    try:
        store.mkdir(parents=True, exist_ok=True)
        if entry.is_file() and entry.stat().st_size == layout.bytes:
            link = folder / f".{DATA_FILE}.link"
            link.unlink(missing_ok=True)
            os.link(entry, link)
            os.replace(link, mine)
        else:
            tmp = store / f".{entry.name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            os.link(mine, tmp)
            os.replace(tmp, entry)
    except OSError as e:
        log(f"warning: {folder.name}: cannot hard-link its weights into {store} ({e.strerror}); "
            f"the bucket keeps its own copy of {DATA_FILE}")
        return None
    return f"{STORE_DIR}/{entry.name}"


def prune_store(root: Path) -> list[str]:
    """Removes store files no bucket links any more (link count 1: only the store's own
    name), e.g. the weights of a bucket since re-exported with others."""
    store = root / STORE_DIR
    gone = []
    if not store.is_dir():
        return gone
    for p in sorted(store.glob(f"*{EXTERNAL_DATA_SUFFIX}")):
        if p.is_file() and p.stat().st_nlink == 1:
            p.unlink()
            gone.append(p.name)
    return gone



def load_model(path: str | Path) -> onnx.ModelProto:
    """A graph with its external weights read in, for the tools of this project that need
    them in memory (FP16 conversion, the builtin INT8 pass). ``onnx.load`` refuses a data
    file with several hard links (its guard against hard-link attacks), and a shared
    bucket's file has one per bucket; this reads the same bytes, bounds checked the same
    way (offset + length within the file, the file inside the graph's folder)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    reader = _Reader(path.parent)
    try:
        for t in _tensors(model):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            where = (path.parent / info.get("location", "")).resolve()
            if where.parent != path.parent.resolve():
                raise ValueError(f"{path.name}: tensor {t.name} has its data outside the "
                                 f"graph's folder ({info.get('location')!r})")
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
            if end > where.stat().st_size:
                raise ValueError(f"{where} is {where.stat().st_size:,} bytes, tensor {t.name} "
                                 f"ends at {end:,}: truncated; re-export the bucket")
            _set_inline(t, reader.read(t))
    finally:
        reader.close()
    return model


def _tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    yield from model.graph.initializer
    for n in model.graph.node:  # Constant nodes may hold external tensors too
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def private_copy(graph: str | Path, into: str | Path) -> Path:
    """``graph`` and its data file copied into the folder ``into`` as files of their own,
    for third-party tools that load the graph through onnx (ModelOpt), which refuses the
    hard-linked shared file. Costs a copy of the weights while the tool runs."""
    graph, into = Path(graph), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph, into / graph.name)
    data = graph.parent / DATA_FILE
    if data.is_file():
        shutil.copyfile(data, into / DATA_FILE)
    return into / graph.name


def is_shared(graph: str | Path) -> bool:
    """Whether the data file beside ``graph`` has other hard links (the store, buckets)."""
    data = Path(graph).parent / DATA_FILE
    return data.is_file() and data.stat().st_nlink > 1
