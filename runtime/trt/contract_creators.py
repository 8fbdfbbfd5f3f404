"""Build-time TensorRT plugin creators written in Python from plugins/contract.json.

Where libvggt_mv_plugins.so cannot be built (no TensorRT headers, as in CI), these creators
stand in for it at build time so that a real ONNX parser and builder still check every
plugin node of a graph: op name, version and namespace (the registry lookup), attribute
names and types (``create_plugin`` refuses anything the contract does not declare), and
tensor types and shapes (output type and shape, the format combinations the C++ plugin
accepts). They have no kernel: ``enqueue`` raises, so an engine built with them is for
inspection only and must never be deployed; a sidecar written from such a build would be
wrong, which is why nothing outside tests and build checks registers them.

Works with ``tensorrt`` (10.x / 11.x) and ``tensorrt_rtx``: the module is handed the
imported TensorRT module instead of importing one.
"""
from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from plugins import contract

__all__ = ["ROUTE_NAME", "REFUSALS", "register", "make_creator"]

ROUTE_NAME = "python (plugins/contract.json)"
# TensorRT's parser turns an exception in create_plugin into "Could not create the plugin"
# and drops its text: the reasons are kept here (and printed) so the caller can say why.
REFUSALS: list[str] = []

# Types the C++ plugin's supportsFormatCombination accepts, by contract dtype name.
_DTYPE_NAMES = {"float32": "FLOAT", "float16": "HALF", "int32": "INT32"}
_FIELD_TYPES = {"int": "INT32", "float": "FLOAT32", "string": "CHAR"}


def _declared(op: str) -> dict[str, dict[str, Any]]:
    return dict(contract.op_spec(op)["attributes"], **contract.load()["common_attributes"])


def _field_value(field: Any, kind: str) -> Any:
    data = field.data
    if kind == "string":
        raw = bytes(data.tobytes()) if hasattr(data, "tobytes") else bytes(data)
        return raw.split(b"\0", 1)[0].decode()
    if getattr(data, "size", 1) != 1:
        raise ValueError(f"field {field.name!r} must hold one value, got {getattr(data, 'size', '?')}")
    value = data.reshape(-1)[0].item() if hasattr(data, "reshape") else data
    return int(value) if kind == "int" else float(value)


def _allowed_types(trt: ModuleType, op: str) -> list[list[Any]]:
    """Per plugin input (then the output) the TensorRT data types the contract allows;
    "same_as:q" is resolved by the caller."""
    spec = contract.op_spec(op)
    out = []
    for io in spec["inputs"] + spec["outputs"]:
        out.append([d if d.startswith("same_as:") else getattr(trt.DataType, _DTYPE_NAMES[d])
                    for d in io["dtypes"]])
    return out


def make_creator(trt: ModuleType, op: str) -> Any:
    """An IPluginCreatorV3One for ``op`` whose plugins implement the build-time interface."""
    declared = _declared(op)
    attrs_only = {k: v for k, v in declared.items() if k not in ("plugin_version", "plugin_namespace")}
    allowed = _allowed_types(trt, op)
    n_inputs = len(contract.op_spec(op)["inputs"])

    class ContractPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
                         trt.IPluginV3OneRuntime):
        def __init__(self, values: dict[str, Any]):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.values = dict(values)
            self.num_outputs = 1
            self.plugin_name = op
            self.plugin_version = contract.plugin_version(op)
            self.plugin_namespace = contract.PLUGIN_NAMESPACE

        def get_capability_interface(self, type):  # noqa: A002 (TensorRT's name)
            return self

        def clone(self):
            return ContractPlugin(self.values)

        def get_output_data_types(self, input_types):
            return [input_types[0]]  # out has q's type

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [inputs[0]]  # out has q's shape [B, H, L, D]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            q_type = in_out[0].desc.type
            ok = []
            for t in allowed[pos]:
                ok.append(q_type if isinstance(t, str) else t)
            return desc.type in ok

        def configure_plugin(self, inputs, outputs):
            pass

        def on_shape_change(self, inputs, outputs):
            pass

        def get_workspace_size(self, inputs, outputs):
            return 0

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def get_fields_to_serialize(self):
            fields, self._field_data = _fields(trt, attrs_only, self.values)
            return trt.PluginFieldCollection(fields)

        def enqueue(self, *args):
            raise RuntimeError(f"{op} from {ROUTE_NAME} has no kernel: build-time checks only; "
                               "load libvggt_mv_plugins.so to run an engine")

    class ContractCreator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = op
            self.plugin_version = contract.plugin_version(op)
            self.plugin_namespace = contract.PLUGIN_NAMESPACE
            fields, self._field_data = _fields(trt, attrs_only, None)
            self.field_names = trt.PluginFieldCollection(fields)

        def create_plugin(self, name, fc, phase):
            values: dict[str, Any] = {}
            problems, mistyped = [], set()
            for f in fc:
                if f.name not in declared:
                    problems.append(f"unknown attribute {f.name!r}")
                    continue
                # the parser hands ONNX INT as INT32, FLOAT as FLOAT32, STRING as CHAR: any
                # other field type means the node's attribute has the wrong ONNX type
                want = getattr(trt.PluginFieldType, _FIELD_TYPES[declared[f.name]["type"]])
                if f.type != want:
                    problems.append(f"attribute {f.name!r} arrives as {f.type.name}, the "
                                    f"contract declares {declared[f.name]['type']} ({want.name})")
                    mistyped.add(f"missing attribute {f.name!r}")  # said once, not twice
                    continue
                try:
                    values[f.name] = _field_value(f, declared[f.name]["type"])
                except (ValueError, UnicodeDecodeError) as e:
                    problems.append(f"attribute {f.name!r}: {e}")
            values.setdefault("plugin_version", contract.plugin_version(op))
            values.setdefault("plugin_namespace", contract.PLUGIN_NAMESPACE)
            problems += [p for p in contract.check_node_attributes(op, values)
                         if not p.startswith("unknown attribute") and p not in mistyped]
            if problems:
                msg = (f"{op} node {name!r} breaks contract {contract.CONTRACT_VERSION}: "
                       + "; ".join(problems))
                REFUSALS.append(msg)
                print(msg, file=sys.stderr)
                raise ValueError(msg)
            return ContractPlugin(values)

    return ContractCreator()


def _fields(trt: ModuleType, declared: dict[str, dict[str, Any]],
            values: dict[str, Any] | None) -> tuple[list[Any], list[Any]]:
    """PluginFields for ``values`` (empty ones when None) and the arrays they point at: a
    PluginField does not own its data, so the caller keeps the arrays alive as long as
    TensorRT may read the fields (without that, serialized engines held freed memory)."""
    import numpy as np

    out, arrays = [], []
    for name, a in declared.items():
        ftype = getattr(trt.PluginFieldType, _FIELD_TYPES[a["type"]])
        if values is None:
            data = np.array([], dtype=np.int32 if a["type"] == "int" else np.float32)
        elif a["type"] == "int":
            data = np.array([values[name]], dtype=np.int32)
        elif a["type"] == "float":
            data = np.array([values[name]], dtype=np.float32)
        else:
            data = np.frombuffer(str(values[name]).encode() + b"\0", dtype=np.int8)
        arrays.append(data)
        out.append(trt.PluginField(name, data, ftype))
    return out, arrays


_REGISTERED: dict[int, list[Any]] = {}


def register(trt: ModuleType) -> list[str]:
    """Registers one creator per contract op in ``trt``'s plugin registry, once per registry;
    returns the op names. Refuses when the real library's creators are already there (two
    implementations of one op under one name would make the build ambiguous)."""
    registry = trt.get_plugin_registry()
    key = id(registry)
    if key in _REGISTERED:
        return [c.name for c in _REGISTERED[key]]
    present = {(c.name, c.plugin_namespace) for c in registry.all_creators}
    clash = [op for op in contract.op_names() if (op, contract.PLUGIN_NAMESPACE) in present]
    if clash:
        raise RuntimeError(f"plugin creators {clash} are already registered (the C++ library is "
                           "loaded); the contract creators are a stand-in only where it is not")
    creators = [make_creator(trt, op) for op in contract.op_names()]
    for c in creators:
        if not registry.register_creator(c, contract.PLUGIN_NAMESPACE):
            raise RuntimeError(f"TensorRT refused to register the contract creator for {c.name}")
    _REGISTERED[key] = creators  # the registry keeps pointers: keep the objects alive
    return [c.name for c in creators]
