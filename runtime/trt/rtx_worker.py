"""Child process of `build-engine --target rtx`: parses one graph with TensorRT for RTX
and builds it ahead of time for the given compute capabilities.

A child because the RTX ONNX parser needs libtensorrt_rtx.so on LD_LIBRARY_PATH at
process start (runtime/trt/rtx.py), and because a fault inside the parser must not take
the CLI down with it. argv: spec.json out.json; spec = {graph, engine, capabilities,
plugin_library, workspace_bytes, flags, native}; out = {ok, error, inputs, outputs,
version, attention_layers}.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _build(spec: dict) -> dict:
    from runtime.layout import atomic_write_bytes
    from runtime.trt.build import _io_of  # noqa: PLC2701 - the same I/O record as full TensorRT
    from runtime.trt.build import allow_decomposed_attention
    from runtime.trt.env import make_logger
    from runtime.trt.plugins import load_plugin_library
    from runtime.trt.rtx import configure_targets, prepare

    trt = prepare()
    messages: list[str] = []
    logger = make_logger(trt, messages)
    if spec.get("plugin_library"):
        load_plugin_library(trt, spec["plugin_library"])
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT for RTX networks are strongly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(spec["graph"]):
        errs = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        return {"ok": False, "error": "ONNX parser rejected the graph: "
                + "; ".join(errs or messages[-5:])}
    attention_layers = allow_decomposed_attention(trt, network) if spec.get("native") else 0
    config = builder.create_builder_config()
    configure_targets(trt, config, spec["capabilities"])
    for name in spec.get("flags") or []:  # STRIP_PLAN, REFIT_IDENTICAL, WEIGHT_STREAMING
        config.set_flag(getattr(trt.BuilderFlag, name))
    if spec.get("workspace_bytes"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec["workspace_bytes"]))
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        return {"ok": False, "error": "the builder returned no engine: "
                + "; ".join(messages[-5:])}
    atomic_write_bytes(spec["engine"], bytes(engine))
    inputs, outputs = _io_of(trt, network)
    return {"ok": True, "inputs": inputs, "outputs": outputs, "version": str(trt.__version__),
            "attention_layers": attention_layers}


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    try:
        out = _build(spec)
    except Exception as e:  # reported to the parent, which names the bucket
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    Path(out_path).write_text(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1], sys.argv[2]))
