"""Triton model configurations (config.pbtxt): a writer and a strict parser + schema check.

config.pbtxt is protobuf text format of Triton's ``inference.ModelConfig``. The bundled
server (pytriton) has only the Python backend, so TensorRT and onnxruntime configs cannot
be loaded here; instead every config the repository writer produces is parsed back and
checked against the subset of model_config.proto listed in ``SCHEMA`` (field names,
scalar kinds, enum values, repeated-ness). An unknown field, a wrong enum or a message
where a scalar belongs is an error, as it would be for the server. Standard library only.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

__all__ = ["ConfigError", "to_pbtxt", "parse_pbtxt", "validate_config", "DATA_TYPES",
           "triton_dtype"]


class ConfigError(ValueError):
    """A config.pbtxt that Triton would reject; ``line`` is where, when known."""

    def __init__(self, msg: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {msg}" if line is not None else msg)


# numpy dtype name -> Triton data type (model_config.proto DataType).
DATA_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "int8": "TYPE_INT8",
    "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bytes": "TYPE_STRING", "bfloat16": "TYPE_BF16",
}


def triton_dtype(numpy_name: str) -> str:
    try:
        return DATA_TYPES[str(numpy_name)]
    except KeyError:
        raise ConfigError(f"dtype {numpy_name!r} has no Triton data type") from None


# ------------------------------------------------------------------------------ schema
# Field kinds: "str", "int", "bool", "float", ("enum", {...}), or a message name;
# a trailing "[]" marks a repeated field. Names follow model_config.proto.
_ENUMS = {
    "DataType": set(DATA_TYPES.values()) | {"TYPE_INVALID"},
    "Kind": {"KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"},
    "Format": {"FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"},
}
SCHEMA: dict[str, dict[str, str]] = {
    "ModelConfig": {
        "name": "str", "platform": "str", "backend": "str", "runtime": "str",
        "version_policy": "ModelVersionPolicy", "max_batch_size": "int",
        "input": "ModelInput[]", "output": "ModelOutput[]",
        "batch_input": "BatchInput[]", "batch_output": "BatchOutput[]",
        "optimization": "ModelOptimizationPolicy", "dynamic_batching": "ModelDynamicBatching",
        "instance_group": "ModelInstanceGroup[]", "default_model_filename": "str",
        "cc_model_filenames": "map<str,str>", "parameters": "map<str,ModelParameter>",
        "ensemble_scheduling": "ModelEnsembling", "model_warmup": "ModelWarmup[]",
        "model_transaction_policy": "ModelTransactionPolicy",
        "response_cache": "ModelResponseCache",
    },
    "ModelInput": {
        "name": "str", "data_type": "enum:DataType", "format": "enum:Format",
        "dims": "int[]", "reshape": "ModelTensorReshape", "is_shape_tensor": "bool",
        "allow_ragged_batch": "bool", "optional": "bool",
    },
    "ModelOutput": {
        "name": "str", "data_type": "enum:DataType", "dims": "int[]",
        "reshape": "ModelTensorReshape", "label_filename": "str", "is_shape_tensor": "bool",
    },
    "ModelTensorReshape": {"shape": "int[]"},
    "ModelVersionPolicy": {"latest": "Latest", "all": "All", "specific": "Specific"},
    "Latest": {"num_versions": "int"},
    "All": {},
    "Specific": {"versions": "int[]"},
    "ModelInstanceGroup": {
        "name": "str", "kind": "enum:Kind", "count": "int", "gpus": "int[]",
        "profile": "str[]", "passive": "bool", "host_policy": "str",
    },
    "ModelDynamicBatching": {
        "preferred_batch_size": "int[]", "max_queue_delay_microseconds": "int",
        "preserve_ordering": "bool", "priority_levels": "int",
        "default_priority_level": "int",
    },
    "ModelParameter": {"string_value": "str"},
    "ModelOptimizationPolicy": {"priority": "str", "input_pinned_memory": "PinnedMemory",
                                "output_pinned_memory": "PinnedMemory",
                                "execution_accelerators": "ExecutionAccelerators"},
    "PinnedMemory": {"enable": "bool"},
    "ExecutionAccelerators": {"gpu_execution_accelerator": "Accelerator[]",
                              "cpu_execution_accelerator": "Accelerator[]"},
    "Accelerator": {"name": "str", "parameters": "map<str,str>"},
    "ModelEnsembling": {"step": "EnsembleStep[]"},
    "EnsembleStep": {"model_name": "str", "model_version": "int",
                     "input_map": "map<str,str>", "output_map": "map<str,str>"},
    "BatchInput": {"kind": "str", "target_name": "str[]", "data_type": "enum:DataType",
                   "source_input": "str[]"},
    "BatchOutput": {"target_name": "str[]", "kind": "str", "source_input": "str[]"},
    "ModelWarmup": {"name": "str", "batch_size": "int", "count": "int"},
    "ModelTransactionPolicy": {"decoupled": "bool"},
    "ModelResponseCache": {"enable": "bool"},
}


# ------------------------------------------------------------------------------ writer
def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Enum):
        return v.name
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


class Enum:
    """An enum value in a config dict (written bare, not quoted)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _emit(d: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, val in d.items():
        if val is None:
            continue
        if isinstance(val, Mapping):
            lines.append(f"{pad}{key} {{")
            lines += _emit(val, indent + 1)
            lines.append(f"{pad}}}")
        elif isinstance(val, (list, tuple)):
            if val and all(isinstance(x, Mapping) for x in val):
                for item in val:
                    lines.append(f"{pad}{key} {{")
                    lines += _emit(item, indent + 1)
                    lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(x) for x in val)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(val)}")
    return lines


def to_pbtxt(config: Mapping[str, Any]) -> str:
    """A config dict (maps written as lists of {key, value} dicts, enums as ``Enum``)
    -> protobuf text. Checked with ``validate_config`` before it is returned."""
    text = "\n".join(_emit(config, 0)) + "\n"
    validate_config(parse_pbtxt(text))
    return text


# ------------------------------------------------------------------------------ parser
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z_][A-Za-z0-9_]*)|'
                    r'(-?[0-9][0-9.eE+-]*)|([{}\[\]:,<>]))')


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) per token: the line goes into every parse error."""
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        line = text.count("\n", 0, pos) + 1
        if not m:
            raise ConfigError(f"cannot parse {text[pos:pos + 20]!r}", line)
        # the token's own line (after the whitespace the match skipped)
        line += text.count("\n", pos, m.start(m.lastindex or 0))
        pos = m.end()
        if m.group(1):
            continue
        for kind, g in zip(("str", "ident", "num", "punct"), m.groups()[1:]):
            if g is not None:
                out.append((kind, g, line))
    return out


class _Msg(list):
    """A parsed message: its (field, value) pairs (kept apart from a [list] value), and
    the line each field starts on."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0
        self.last_line = self.toks[-1][2] if self.toks else 1

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise ConfigError(f"unexpected end of config (expected {want or 'a token'})",
                              self.last_line)
        if want is not None and tok[1] != want:
            raise ConfigError(f"expected {want!r}, got {tok[1]!r}", tok[2])
        self.i += 1
        return tok

    def value(self) -> Any:
        kind, tok, line = self.take()
        if kind == "str":
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        if kind == "num":
            try:
                return float(tok) if any(c in tok for c in ".eE") else int(tok)
            except ValueError:
                raise ConfigError(f"{tok!r} is not a number", line) from None
        if kind == "ident":
            return True if tok == "true" else False if tok == "false" else Enum(tok)
        raise ConfigError(f"expected a value, got {tok!r}", line)

    def message(self, close: str | None) -> "_Msg":
        fields = _Msg()
        while True:
            tok = self.peek()
            if tok is None:
                if close:
                    raise ConfigError(f"missing {close!r} at end of config", self.last_line)
                return fields
            if close and tok[1] == close:
                self.take()
                return fields
            kind, name, line = self.take()
            if kind != "ident":
                raise ConfigError(f"expected a field name, got {name!r}", line)
            fields.lines.append(line)
            nxt = self.peek()
            if nxt and nxt[1] == ":":
                self.take(":")
                nxt = self.peek()
            if nxt and nxt[1] in ("{", "<"):
                self.take()
                fields.append((name, self.message("}" if nxt[1] == "{" else ">")))
            elif nxt and nxt[1] == "[":
                self.take("[")
                items: list[Any] = []
                while self.peek() and self.peek()[1] != "]":
                    if self.peek()[1] in ("{", "<"):
                        o = self.take()[1]
                        items.append(self.message("}" if o == "{" else ">"))
                    else:
                        items.append(self.value())
                    if self.peek() and self.peek()[1] == ",":
                        self.take(",")
                self.take("]")
                fields.append((name, items))
            else:
                fields.append((name, self.value()))


def parse_pbtxt(text: str) -> list[tuple[str, Any]]:
    """Protobuf text -> ordered (field, value) pairs; messages are nested pair lists."""
    return _Parser(text).message(None)


def _check(fields: list[tuple[str, Any]], msg: str, where: str) -> dict[str, Any]:
    schema = SCHEMA[msg]
    out: dict[str, Any] = {}
    lines = getattr(fields, "lines", [])
    for i, (name, val) in enumerate(fields):
        try:
            _check_field(schema, msg, name, val, where, out)
        except ConfigError as e:
            if e.line is None and i < len(lines):  # the innermost field's line wins
                raise ConfigError(str(e), lines[i]) from None
            raise
    return out


def _check_field(schema: dict[str, str], msg: str, name: str, val: Any, where: str,
                 out: dict[str, Any]) -> None:
    here = f"{where}.{name}" if where else name
    if name not in schema:
        raise ConfigError(f"{here}: no field {name!r} in {msg} (known: "
                          f"{', '.join(sorted(schema))})")
    kind = schema[name]
    repeated = kind.endswith("[]")
    base = kind[:-2] if repeated else kind
    is_list = isinstance(val, list) and not isinstance(val, _Msg)
    if is_list and not repeated:
        raise ConfigError(f"{here}: a [list] given to a single-valued field")
    vals = list(val) if is_list else [val]
    if not repeated and not base.startswith("map<") and name in out:
        raise ConfigError(f"{here}: set twice (not a repeated field)")
    checked = [_check_value(v, base, here) for v in vals]
    if repeated or base.startswith("map<"):
        out.setdefault(name, []).extend(checked)
    else:
        if len(checked) != 1:
            raise ConfigError(f"{here}: a list given to a single-valued field")
        out[name] = checked[0]


def _check_value(v: Any, kind: str, where: str) -> Any:
    if kind.startswith("map<"):
        ktype, vtype = kind[4:-1].split(",")
        if not isinstance(v, _Msg):
            raise ConfigError(f"{where}: a map entry must be {{ key: ... value: ... }}")
        entry = dict(v)
        if set(entry) != {"key", "value"} or len(v) != 2:
            raise ConfigError(f"{where}: a map entry needs exactly 'key' and 'value', got "
                              f"{[k for k, _ in v]}")
        key = _check_value(entry["key"], ktype, where + ".key")
        return (key, _check_value(entry["value"], vtype, where + ".value"))
    if kind.startswith("enum:"):
        allowed = _ENUMS[kind[5:]]
        if not isinstance(v, Enum) or v.name not in allowed:
            raise ConfigError(f"{where}: {v!r} is not a {kind[5:]} value "
                              f"({', '.join(sorted(allowed))})")
        return v.name
    if kind in SCHEMA:
        if not isinstance(v, _Msg):
            raise ConfigError(f"{where}: expected a {kind} message, got {v!r}")
        return _check(v, kind, where)
    if isinstance(v, _Msg):
        raise ConfigError(f"{where}: a message where a {kind} belongs")
    ok = {"str": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool),
          "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
          "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)}[kind]
    if not ok(v):
        raise ConfigError(f"{where}: expected {kind}, got {v!r}")
    return v


def validate_config(fields: list[tuple[str, Any]]) -> dict[str, Any]:
    """Schema check of a parsed config plus the rules Triton applies on load that the
    schema cannot express; returns the config as a plain dict."""
    cfg = _check(fields, "ModelConfig", "")
    if not cfg.get("name"):
        raise ConfigError("config has no name")
    if not (cfg.get("platform") or cfg.get("backend")):
        raise ConfigError(f"model {cfg['name']}: set platform or backend")
    mbs = cfg.get("max_batch_size", 0)
    if mbs < 0:
        raise ConfigError(f"model {cfg['name']}: max_batch_size must be >= 0")
    if "dynamic_batching" in cfg and mbs == 0:
        raise ConfigError(f"model {cfg['name']}: dynamic_batching needs max_batch_size > 0")
    for io in ("input", "output"):
        names = [t["name"] for t in cfg.get(io, [])]
        if len(set(names)) != len(names):
            raise ConfigError(f"model {cfg['name']}: duplicate {io} names {names}")
        for t in cfg.get(io, []):
            for key in ("name", "data_type", "dims"):
                if key not in t:
                    raise ConfigError(f"model {cfg['name']}: {io} {t.get('name', '?')} "
                                      f"has no {key}")
            if any(d < -1 or d == 0 for d in t["dims"]):
                raise ConfigError(f"model {cfg['name']}: {io} {t['name']} dims "
                                  f"{t['dims']} (use -1 for variable, > 0 otherwise)")
    for g in cfg.get("instance_group", []):
        if g.get("count", 1) < 1:
            raise ConfigError(f"model {cfg['name']}: instance_group count must be >= 1")
    return cfg
