"""Graph surgery: every portable attention site -> one TensorRT plugin node (route
"plugin"), or every dense site -> one standard ONNX `Attention` node and every sparse
site -> a plugin node (route "native", export/native.py).

Exact by construction: a site is a call of vggt_mv.fn::BiasedAttention or
::SparseAttention (see export/portable.py), never a pattern guessed from MatMul/Softmax.
The number replaced must equal what the model reported for the bucket (manifest
"attention_sites"), else SurgeryError names the sites that are missing. Running it on
its own output changes nothing (already-plugin nodes are counted, not rewritten).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from plugins import contract

from .native import SITE_SUFFIX, is_native_site, lower_dense_sites

ROUTES = ("plugin", "native")


class SurgeryError(RuntimeError):
    pass


@dataclass
class SurgeryReport:
    replaced: dict[str, int] = field(default_factory=dict)
    already_plugins: dict[str, int] = field(default_factory=dict)
    site_names: dict[str, list[str]] = field(default_factory=dict)
    route: str = "plugin"
    # sites served by a standard Attention node (route "native"), per op
    native: dict[str, int] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        return {op: self.replaced.get(op, 0) + self.already_plugins.get(op, 0)
                + self.native.get(op, 0) for op in contract.op_names()}

    def to_dict(self) -> dict:
        d = {"replaced": self.replaced, "already_plugins": self.already_plugins,
             "totals": self.totals}
        if self.route == "native":
            d.update(route="native", native=self.native)
        return d


def surgery(model: onnx.ModelProto, expected: dict[str, int] | None = None,
            expected_sites: dict[str, list[str]] | None = None, route: str = "plugin"
            ) -> tuple[onnx.ModelProto, SurgeryReport]:
    """Replace function-call sites by plugin nodes (or, route "native", dense sites by
    `Attention` nodes). `expected` maps op type -> count. `model` is not modified."""
    if route not in ROUTES:
        raise ValueError(f"surgery route must be one of {ROUTES}, got {route!r}")
    report = SurgeryReport(replaced={op: 0 for op in contract.op_names()},
                           already_plugins={op: 0 for op in contract.op_names()},
                           site_names={op: [] for op in contract.op_names()},
                           route=route, native={op: 0 for op in contract.op_names()})
    if route == "native":
        src = model
        model = onnx.ModelProto()
        model.CopyFrom(src)
        lower_dense_sites(model)
        for node in model.graph.node:
            if is_native_site(node):
                report.native[contract.BIASED_OP] += 1
                report.site_names[contract.BIASED_OP].append(
                    node.name[: -len(SITE_SUFFIX)])
    graph = gs.import_onnx(model)
    problems = []
    for node in graph.nodes:
        if node.domain == contract.FUNCTION_DOMAIN and contract.is_portable_function(node.op):
            op = contract.op_for_function(node.op)
            node.op = op
            node.domain = contract.ONNX_DOMAIN
            node.attrs["plugin_version"] = contract.plugin_version(op)
            node.attrs["plugin_namespace"] = contract.PLUGIN_NAMESPACE
            problems += [f"{node.name}: {p}" for p in
                         contract.check_node_attributes(op, dict(node.attrs))]
            report.replaced[op] += 1
            report.site_names[op].append(node.name)
        elif node.domain == contract.ONNX_DOMAIN and node.op in contract.op_names():
            report.already_plugins[node.op] += 1
            report.site_names[node.op].append(node.name)
    if problems:
        raise SurgeryError("plugin nodes would violate the op contract:\n  "
                           + "\n  ".join(problems))
    if expected is not None:
        bad = {op: (n, report.totals.get(op, 0)) for op, n in expected.items()
               if report.totals.get(op, 0) != n}
        if bad:
            lines = [f"{op}: model reports {want} sites, graph has {got}"
                     for op, (want, got) in bad.items()]
            if expected_sites:
                for op, names in expected_sites.items():
                    missing = sorted(set(names) - set(report.site_names.get(op, [])))
                    if missing:
                        lines.append(f"{op}: sites not found: {', '.join(missing[:20])}"
                                     + (" ..." if len(missing) > 20 else ""))
            raise SurgeryError("attention sites do not match the model:\n  " + "\n  ".join(lines)
                               + "\n(was the graph optimized or quantized in a way that "
                               "inlined the vggt_mv.fn functions?)")
    out = gs.export_onnx(graph, do_type_check=False)
    # gs keeps local functions; drop the ones no node calls any more.
    called = {(n.domain, n.op_type) for n in out.graph.node}
    kept = [f for f in out.functions if (f.domain, f.name) in called]
    del out.functions[:]
    out.functions.extend(kept)
    imports = {o.domain: o.version for o in out.opset_import}
    if any(n.domain == contract.ONNX_DOMAIN for n in out.graph.node):
        imports[contract.ONNX_DOMAIN] = 1
    else:  # a native graph of a dense bucket: nothing of ours left in it
        imports.pop(contract.ONNX_DOMAIN, None)
    if not any(f.domain == contract.FUNCTION_DOMAIN for f in kept) and not any(
            n.domain == contract.FUNCTION_DOMAIN for n in out.graph.node):
        imports.pop(contract.FUNCTION_DOMAIN, None)
    del out.opset_import[:]
    out.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in imports.items())
    out.ir_version = model.ir_version
    for k in ("producer_name", "producer_version", "model_version", "doc_string"):
        setattr(out, k, getattr(model, k))
    return out, report


def surgery_file(src: str | Path, dst: str | Path, expected: dict[str, int] | None = None,
                 route: str = "plugin") -> SurgeryReport:
    """File to file, keeping external weights where they are (same folder)."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    out, report = surgery(model, expected, route=route)
    onnx.save(out, str(dst))
    return report
