"""A real TensorRT builder on the CPU: TensorRT for RTX (pip install tensorrt-rtx) parses and
builds, for SM86, the tiny-preset graphs of four bucket kinds, including the FP16 / INT8
graphs and the plugin graphs: with libvggt_mv_plugins.so where it can be built here (TensorRT
headers in $TENSORRT_INCLUDE_DIR, nvcc, cmake), else with the Python build-time creators made
from plugins/contract.json (runtime/trt/contract_creators.py), so the parser and builder still
check every plugin node's name, version, namespace, fields and shapes; `-s` prints the route
("plugin creators: ..."). Precisions are read from the builder's own verbose layer report
(the engine inspector needs a GPU). Kernels never execute: this proves the parser, the
builder and the plugins' build-time methods, not numerics or speed."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from calib.dataset import build_calibration_set
from calib.precision import make_precision
from export.buckets import Bucket
from export.exporter import export_bucket
from vggt_mv.config import tiny_config
from vggt_mv.models import VGGTMV

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda s: None}
BUCKETS = {
    "dense": (Bucket(2, 2, 42, 56), {}),
    "sparse": (Bucket(2, 1, 42, 28), {"sparse_global": True}),
    "ext-mask": (Bucket(2, 2, 28, 28, ext_mask=True), {}),
    "single-view": (Bucket(3, 1, 28, 42, single_view=True), {}),
}

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="TensorRT for RTX not installed (pip install -e .[test])")


def plugin_library(out: Path) -> Path | None:
    """libvggt_mv_plugins.so built against $TENSORRT_INCLUDE_DIR (None when it cannot be)."""
    inc = os.environ.get("TENSORRT_INCLUDE_DIR")
    if not inc or shutil.which("cmake") is None or shutil.which("nvcc") is None:
        return None
    for cmd in (["cmake", "-S", str(ROOT / "plugins"), "-B", str(out),
                 f"-DTENSORRT_INCLUDE_DIR={inc.split(os.pathsep)[-1]}",
                 "-DCMAKE_CUDA_ARCHITECTURES=86"],
                ["cmake", "--build", str(out), "--target", "vggt_mv_plugins", "-j2"]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return out / "libvggt_mv_plugins.so"


@pytest.fixture(scope="module")
def built(tmp_path_factory, mv_scene):
    root = tmp_path_factory.mktemp("rtx")
    folders, manifests = {}, {}
    for kind, (bucket, opt) in BUCKETS.items():
        torch.manual_seed(0)
        res = export_bucket(VGGTMV(tiny_config(**opt)).eval(), bucket, root / kind, **QUIET)
        folders[kind], manifests[kind] = res.folder, res.manifest
    dense = folders["dense"]
    npz = build_calibration_set(mv_scene, 2, 2, (42, 56), 4, root / "calib.npz")
    make_precision(dense, "fp16", npz, **QUIET)
    make_precision(dense, "int8", npz, backend="builtin", **QUIET)
    lib = plugin_library(root / "plugins_build")
    graphs = [str(f / g) for f in folders.values() for g in ("model.onnx", "model.plugins.onnx")]
    graphs += [str(dense / f"model.{m}{p}.onnx") for m in ("fp16", "int8") for p in ("", ".plugins")]
    graphs.append(str(broken_plugin_graph(dense, root / "broken")))
    graphs.append(str(folders["sparse"] / "model.native.onnx"))  # mixed: plugins for sparse
    out, stderr = run_worker(root, "plugins", graphs, lib)
    # which creators the real parser found: the C++ library, or the contract's Python
    # stand-ins where the library cannot be built (no TensorRT headers, as in CI)
    print(f"\nplugin creators: {out['route']}")
    # Native graphs of dense buckets in a process that never loads or registers anything
    # of ours: what a fresh machine with TensorRT from pip has.
    native = [str(folders[k] / "model.native.onnx") for k in ("dense", "ext-mask", "single-view")]
    native += [str(dense / f"model.{m}.native.onnx") for m in ("fp16", "int8")]
    bare, _ = run_worker(root, "native", native, None, no_plugins=True)
    reports = {str(Path(g).relative_to(root)): r
               for o in (out, bare) for g, r in o["graphs"].items()}
    return folders, manifests, out["route"], reports, stderr, bare


def run_worker(root: Path, name: str, graphs: list[str], lib: Path | None,
               no_plugins: bool = False) -> tuple[dict, str]:
    from runtime.trt.rtx import subprocess_env

    spec = root / f"spec-{name}.json"
    spec.write_text(json.dumps({"graphs": graphs, "plugin_library": str(lib) if lib else None,
                                "no_plugins": no_plugins}))
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "trt_rtx_worker.py"), str(spec),
                          str(root / f"out-{name}.json")], env=subprocess_env(),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((root / f"out-{name}.json").read_text()), res.stderr


def broken_plugin_graph(bucket: Path, out: Path) -> Path:
    """The dense plugin graph with `scale` removed from its first plugin node: both routes'
    creators must refuse it (the C++ plugin and the contract creators check fields)."""
    import onnx

    from plugins import contract

    model = onnx.load(str(bucket / "model.plugins.onnx"), load_external_data=False)
    node = next(n for n in model.graph.node if n.domain == contract.ONNX_DOMAIN)
    keep = [a for a in node.attribute if a.name != "scale"]
    del node.attribute[:]
    node.attribute.extend(keep)
    out.mkdir()
    for f in bucket.iterdir():  # external data of the portable graph, referenced by name
        if f.name.endswith(".data"):
            (out / f.name).symlink_to(f)
    onnx.save(model, str(out / "model.plugins.onnx"))
    return out / "model.plugins.onnx"


def report(built, kind, graph):
    folders, reps = built[0], built[3]
    return reps[f"{kind}/{folders[kind].name}/{graph}"]


def engine_plugins(rep) -> list[dict]:
    """Plugin layers as the builder placed them in the engine (its verbose layer report):
    dtypes of inputs, then of inputs it folded into constants (r, c), then of outputs."""
    assert rep["engine_layers"], "the builder printed no layer report (profiling verbosity?)"
    return [l for l in rep["engine_layers"] if l["type"] == "custom_layer"]


def test_route_is_the_library_where_it_can_be_built(built):
    """Headers + nvcc + cmake: the C++ library is built and loaded; otherwise the contract's
    Python creators stand in (as in CI). Either way the other tests assert the same things."""
    can_build = bool(os.environ.get("TENSORRT_INCLUDE_DIR")) and shutil.which("nvcc") \
        and shutil.which("cmake")
    route = built[2]
    assert route.startswith("libvggt_mv_plugins.so") if can_build else \
        route == "python (plugins/contract.json)", route


def test_broken_plugin_attribute_is_refused(built):
    rep = built[3]["broken/model.plugins.onnx"]
    assert not rep.get("built"), rep
    # the C++ plugin, loaded by a bare dlopen, has no TensorRT logger: it says why on stderr
    text = " ".join(rep["parser_errors"] + rep["log_errors"] + rep.get("contract_refusals", [])
                    + [built[4]])
    assert "'scale'" in text, rep


@pytest.mark.parametrize("kind", list(BUCKETS))
@pytest.mark.parametrize("graph", ["model.onnx", "model.plugins.onnx"])
def test_every_bucket_kind_builds_for_sm86(built, kind, graph):
    rep = report(built, kind, graph)
    assert rep["parsed"] and rep["built"] and rep["engine_bytes"] > 0, rep
    m = built[1][kind]
    sites = sum(m["surgery"]["totals"].values())
    if graph == "model.onnx":  # functions inlined by the parser: no plugin layer
        assert rep["plugin_layers"] == [] and engine_plugins(rep) == []
    else:
        assert len(rep["plugin_layers"]) == sites > 0
        assert all(p["inputs"][:3] == ["FLOAT"] * 3 and p["outputs"] == ["FLOAT"]
                   for p in rep["plugin_layers"])
        eng = engine_plugins(rep)  # the builder kept one plugin layer per site, all FP32
        assert len(eng) == sites, [l["type"] for l in rep["engine_layers"]]
        assert all(l["inputs"][:3] == ["Float"] * 3 and l["outputs"] == ["Float"] for l in eng), eng


@pytest.mark.parametrize("graph", ["model.fp16.onnx", "model.fp16.plugins.onnx"])
def test_fp16_engine_attention_has_fp16_io(built, graph):
    rep = report(built, "dense", graph)
    assert rep["parsed"] and rep["built"], rep
    if graph.endswith("plugins.onnx"):
        assert len(rep["plugin_layers"]) == sum(built[1]["dense"]["surgery"]["totals"].values())
        for p in rep["plugin_layers"]:  # q, k, v and out in FP16; r, c in FP32
            assert p["inputs"][:3] == ["HALF"] * 3 and p["outputs"] == ["HALF"], p
            assert all(t == "FLOAT" for t in p["inputs"][3:]), p
        eng = engine_plugins(rep)  # and so the builder's engine has them
        assert len(eng) == len(rep["plugin_layers"])
        for l in eng:
            io = l["inputs"] + l["constants"]
            assert io[:3] == ["Half"] * 3 and l["outputs"] == ["Half"], l
            assert all(t == "Float" for t in io[3:]), l
    else:  # the parser inlines the attention functions: their GEMMs must be FP16 too
        sites = attention_gemm_layers(rep)
        assert len(sites) == sum(built[1]["dense"]["surgery"]["totals"].values()), sorted(sites)
        for site, layers in sites.items():
            # each layer holding a q·kᵀ / P·V MatMul of the site reads FP16 operands: a GEMM
            # of two halves, or the builder's fused attention kernel on FP16 q, k, v (a
            # function that widened q, k, v first showed up as Float x Float gemm layers)
            for l in layers:
                assert l["inputs"].count("Half") >= 2, (site, l)


def attention_gemm_layers(rep) -> dict[str, list[dict]]:
    """Engine layers made from a MatMul inside an inlined attention function, per site (the
    layer's origin reads '..._MatMul | node_biased_attention_3 (BiasedAttention)')."""
    import re

    sites: dict[str, list[dict]] = {}
    for l in rep["engine_layers"]:
        for site in set(re.findall(r"_MatMul \| (\S+) \((?:Biased|Sparse)Attention\)",
                                   l["origin"])):
            sites.setdefault(site, []).append(l)
    return sites


@pytest.mark.parametrize("graph", ["model.int8.onnx", "model.int8.plugins.onnx"])
def test_int8_engine_has_int8_layers(built, graph):
    rep = report(built, "dense", graph)
    assert rep["parsed"] and rep["built"], rep
    assert rep["qdq_layers"] > 0 and rep["int8_tensors"] > 0, rep
    # the builder's report: matrix multiplies / convolutions of the engine that read INT8
    int8_compute = [l for l in rep["engine_layers"] if l["type"] in ("gemm", "correlation", "deconv")
                    and "Int8" in l["inputs"] + l["constants"]]
    assert int8_compute, sorted({l["type"] for l in rep["engine_layers"]})
    if graph.endswith("plugins.onnx"):
        assert len(rep["plugin_layers"]) == sum(built[1]["dense"]["surgery"]["totals"].values())
        assert all(p["inputs"][:3] == ["FLOAT"] * 3 for p in rep["plugin_layers"])
        eng = engine_plugins(rep)  # no Q/DQ at the sites: the plugin stays FP32
        assert len(eng) == len(rep["plugin_layers"])
        assert all(l["inputs"][:3] == ["Float"] * 3 and l["outputs"] == ["Float"] for l in eng), eng


# ----------------------------------------------------------------- native attention
NATIVE = [("dense", "model.native.onnx"), ("ext-mask", "model.native.onnx"),
          ("single-view", "model.native.onnx"), ("dense", "model.fp16.native.onnx"),
          ("dense", "model.int8.native.onnx")]


def native_site_layers(rep) -> dict[str, list[dict]]:
    """Engine layers made from a site's Attention node (origin '<site>::vggt_site')."""
    import re

    sites: dict[str, list[dict]] = {}
    for l in rep["engine_layers"]:
        for site in set(re.findall(r"(\S+)::vggt_site", l["origin"])):
            sites.setdefault(site, []).append(l)
    return sites


def test_native_engines_are_built_without_anything_of_ours(built):
    bare = built[5]
    assert bare["route"] == "none" and bare["loaded_libraries"] == []
    assert not bare["vggt_creators"], bare["vggt_creators"]  # None: registry not listable


@pytest.mark.parametrize("kind,graph", NATIVE)
def test_native_engine_has_one_attention_pair_per_dense_site(built, kind, graph):
    rep = report(built, kind, graph)
    assert rep["parsed"] and rep["built"] and rep["engine_bytes"] > 0, rep
    sites = built[1][kind]["attention_sites"]["VggtBiasedAttention"]
    assert len(rep["attention_layers"]) == rep["attention_outputs"] == sites > 0, rep
    assert rep["plugin_layers"] == [] and engine_plugins(rep) == []
    # the builder kept every site: engine layers made from each site's Attention node
    assert len(native_site_layers(rep)) == sites, sorted(native_site_layers(rep))


def test_fp16_native_engine_attention_reads_fp16(built):
    rep = report(built, "dense", "model.fp16.native.onnx")
    assert all(a["inputs"] == ["HALF"] * 3 for a in rep["attention_layers"]), rep
    for site, layers in native_site_layers(rep).items():
        # the fused attention kernel of each site runs on FP16 q, k, v
        fused = [l for l in layers if "mha" in l["tactic"].lower()
                 or l["type"].lower().startswith("attention")]
        assert fused, (site, [(l["type"], l["tactic"]) for l in layers])
        assert all(l["inputs"].count("Half") >= 3 for l in fused), (site, fused)


def test_int8_native_engine_has_int8_layers(built):
    rep = report(built, "dense", "model.int8.native.onnx")
    assert rep["qdq_layers"] > 0 and rep["int8_tensors"] > 0, rep
    assert [l for l in rep["engine_layers"] if l["type"] in ("gemm", "correlation", "deconv")
            and "Int8" in l["inputs"] + l["constants"]]


def test_sparse_native_graph_is_mixed(built):
    """Dense sites on IAttention, sparse sites on the plugin: one engine."""
    rep = report(built, "sparse", "model.native.onnx")
    assert rep["parsed"] and rep["built"], rep
    sites = built[1]["sparse"]["attention_sites"]
    assert sites["VggtSparseAttention"] > 0 and sites["VggtBiasedAttention"] > 0
    assert len(rep["attention_layers"]) == sites["VggtBiasedAttention"]
    assert len(rep["plugin_layers"]) == len(engine_plugins(rep)) == sites["VggtSparseAttention"]
