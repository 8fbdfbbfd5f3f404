"""The plugin op contract (contract.json) as Python constants and checks.

Single source of truth for the exporter, the surgery, the CPU reference ops and the
runtime. stdlib only: the Jetson runtime imports it without onnx or torch.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CONTRACT_PATH = Path(__file__).with_name("contract.json")


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    return json.loads(CONTRACT_PATH.read_text())


_C = load()
CONTRACT_VERSION: str = _C["contract_version"]
ONNX_DOMAIN: str = _C["onnx_domain"]
PLUGIN_NAMESPACE: str = _C["plugin_namespace"]
FUNCTION_DOMAIN: str = _C["portable_function_domain"]
BIASED_OP = "VggtBiasedAttention"
SPARSE_OP = "VggtSparseAttention"
STRATEGIES = {"landmark": 0, "dilated": 1, "memory_bank": 2}
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def op_names() -> list[str]:
    return list(_C["ops"])


def op_spec(op: str) -> dict[str, Any]:
    try:
        return _C["ops"][op]
    except KeyError:
        raise KeyError(f"{op!r} is not a plugin op of contract {CONTRACT_VERSION}; "
                       f"known: {op_names()}") from None


def plugin_version(op: str) -> str:
    return op_spec(op)["plugin_version"]


def portable_function(op: str) -> str:
    return op_spec(op)["portable_function"]


def op_for_function(function_name: str) -> str:
    for op, spec in _C["ops"].items():
        if spec["portable_function"] == function_name:
            return op
    raise KeyError(f"{function_name!r} is not a portable function of the contract")


def is_portable_function(name: str) -> bool:
    return any(s["portable_function"] == name for s in _C["ops"].values())


def check_node_attributes(op: str, attrs: dict[str, Any]) -> list[str]:
    """Problems with a plugin node's attributes (empty list when it follows the contract)."""
    spec = op_spec(op)
    problems = []
    declared = dict(spec["attributes"], **_C["common_attributes"])
    for name, a in declared.items():
        if name not in attrs:
            problems.append(f"missing attribute {name!r}")
            continue
        v = attrs[name]
        if a["type"] == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                problems.append(f"attribute {name!r} must be an int, got {type(v).__name__}")
            elif not INT32_MIN <= v <= INT32_MAX:
                problems.append(f"attribute {name!r}={v} does not fit int32 (TensorRT reads "
                                "INT attributes as int32 plugin fields)")
        elif a["type"] == "float" and not isinstance(v, (int, float)):
            problems.append(f"attribute {name!r} must be a float")
        elif a["type"] == "string" and not isinstance(v, (str, bytes)):
            problems.append(f"attribute {name!r} must be a string")
    for name in attrs:
        if name not in declared:
            problems.append(f"unknown attribute {name!r}")
    if op == SPARSE_OP and "strategy" in attrs and attrs["strategy"] not in STRATEGIES.values():
        problems.append(f"strategy {attrs['strategy']} is not one of {STRATEGIES}")
    if attrs.get("plugin_version", plugin_version(op)) not in (plugin_version(op),
                                                              plugin_version(op).encode()):
        problems.append(f"plugin_version {attrs['plugin_version']!r} != "
                        f"{plugin_version(op)!r}")
    return problems
