"""Child process of tests/test_trt_rtx_build.py: parses and builds ONNX graphs with TensorRT
for RTX for SM86 (no GPU needed) and reports what the parser and builder saw, as JSON.

Runs in its own process because the parser needs libtensorrt_rtx.so on LD_LIBRARY_PATH
(runtime/trt/rtx.py). argv: spec.json (graphs, optional plugin library) out.json."""
from __future__ import annotations

import ctypes
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# One line per engine layer in the builder's verbose "Layers:" report (profiling verbosity
# DETAILED), e.g. "Name: n, LayerType: gemm, Inputs: [ { ..., Datatype: Int8, ... }],
# Constants: [...], Outputs: [...], TacticName: ...". It is the builder's own account of the
# precision each engine layer got, available without a GPU (the engine inspector is not:
# it needs a deserialized engine, hence a driver).
_SECTION = r"{}: \[(.*?)\](?=, (?:Inputs|Constants|Outputs|TacticName|StreamId|Metadata)\b|$)"


def engine_layers(report: str) -> list[dict]:
    layers = []
    for line in report.splitlines():
        if not line.startswith("Name: "):
            continue
        kind = re.search(r"LayerType: ([^,]*)", line)
        rec = {"type": kind.group(1) if kind else "?"}
        for key in ("Inputs", "Constants", "Outputs"):
            m = re.search(_SECTION.format(key), line)
            rec[key.lower()] = re.findall(r"Datatype: (\w+)", m.group(1)) if m else []
        meta = re.search(r"Metadata: \[(.*)\]\s*$", line)  # the ONNX node(s) it came from
        rec["origin"] = meta.group(1) if meta else ""
        tactic = re.search(r"TacticName: ([^,]*)", line)
        rec["tactic"] = tactic.group(1).strip() if tactic else ""
        layers.append(rec)
    return layers


def main(spec_path: str, out_path: str) -> None:
    from runtime.trt.build import allow_decomposed_attention
    from runtime.trt.rtx import configure_targets, prepare

    trt = prepare()
    spec = json.loads(Path(spec_path).read_text())
    contract = not spec.get("no_plugins") and not spec.get("plugin_library")
    if spec.get("no_plugins"):  # native graphs: nothing of ours may be needed, or found
        route = "none"
    elif spec.get("plugin_library"):
        ctypes.CDLL(spec["plugin_library"], mode=ctypes.RTLD_GLOBAL)  # load-time registration
        route = f"libvggt_mv_plugins.so ({spec['plugin_library']})"
    else:  # no C++ library here: the contract's build-time creators stand in for it
        from runtime.trt.contract_creators import REFUSALS, ROUTE_NAME, register

        register(trt)
        route = ROUTE_NAME
    print(f"plugin creators: {route}", flush=True)

    class Log(trt.ILogger):
        """Keeps errors and the builder's engine layer report, drops the ~40k other
        verbose lines a build emits."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.layer_report: str | None = None

        def log(self, severity, msg):
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(f"{severity.name}: {msg}")
            elif msg.startswith("Layers:"):
                self.layer_report = msg

    reports = {}
    for graph in spec["graphs"]:
        log = Log()
        builder = trt.Builder(log)
        network = builder.create_network(0)  # TensorRT for RTX: strongly typed
        parser = trt.OnnxParser(network, log)
        ok = parser.parse_from_file(graph)
        rep = {"parsed": bool(ok),
               "parser_errors": [parser.get_error(i).desc() for i in range(parser.num_errors)]}
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        rep["plugin_layers"] = [
            {"name": l.name,
             "inputs": [l.get_input(j).dtype.name for j in range(l.num_inputs)],
             "outputs": [l.get_output(j).dtype.name for j in range(l.num_outputs)]}
            for l in layers if l.type == trt.LayerType.PLUGIN_V3]
        # IAttention as parsed, with the dtypes of q, k, v; marked decomposable by the same
        # call build-engine makes (runtime/trt/build.py)
        rep["attention_layers"] = []
        for l in layers:
            if l.type == trt.LayerType.ATTENTION_INPUT:
                rep["attention_layers"].append(
                    {"name": l.name,
                     "inputs": [l.get_input(j).dtype.name for j in range(min(3, l.num_inputs))]})
        rep["attention_outputs"] = sum(l.type == trt.LayerType.ATTENTION_OUTPUT for l in layers)
        allow_decomposed_attention(trt, network)
        rep["qdq_layers"] = sum(l.type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
                                for l in layers)
        rep["int8_tensors"] = sum(l.get_output(j).dtype == trt.DataType.INT8
                                  for l in layers for j in range(l.num_outputs))
        if ok:
            cfg = builder.create_builder_config()
            configure_targets(trt, cfg, ["8.6"])  # the build-engine --target rtx code
            cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer dtypes in the log
            t0 = time.perf_counter()
            engine = builder.build_serialized_network(network, cfg)
            rep["build_seconds"] = round(time.perf_counter() - t0, 2)
            rep["built"] = engine is not None
            rep["engine_bytes"] = engine.nbytes if engine is not None else 0
        rep["engine_layers"] = engine_layers(log.layer_report) if log.layer_report else None
        rep["log_errors"] = log.errors[:5]
        if contract:
            rep["contract_refusals"] = REFUSALS[:]
            REFUSALS.clear()
        reports[graph] = rep
    try:  # creators of our namespace the registry holds at the end (none without a library)
        ours = sorted(c.name for c in trt.get_plugin_registry().all_creators
                      if getattr(c, "plugin_namespace", "") == "vggt_mv")
    except AttributeError:
        ours = None
    loaded = sorted({Path(m.split()[-1]).name for m in Path("/proc/self/maps").read_text()
                     .splitlines() if "vggt_mv" in m and m.endswith(".so")})
    Path(out_path).write_text(json.dumps({"route": route, "graphs": reports,
                                          "loaded_libraries": loaded, "vggt_creators": ours},
                                         indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
