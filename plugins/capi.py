"""ctypes binding of `vggt_attention_launch` (csrc/attention/attention_capi.cu), the C entry
point scripts/gpu_check.py drives, on the GPU build and on the host (CPU shim) build alike.

The argument list is read from the C source when the library is loaded and callers pass
every argument by name, so a change of the C signature fails loudly at the first call
instead of shifting arguments into the wrong slots (a ctypes call cannot check what the
compiled function expects). stdlib only.
"""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

CAPI_SOURCE = Path(__file__).resolve().parent / "csrc" / "attention" / "attention_capi.cu"
ENTRY = "vggt_attention_launch"
_SCALARS = {"int": ctypes.c_int, "float": ctypes.c_float}


class SignatureError(RuntimeError):
    pass


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", text, flags=re.S)


def parse_signature(text: str, origin: str = "source") -> list[tuple[str, type]]:
    """[(parameter name, ctypes type)] of `extern "C" int vggt_attention_launch(...)`; any
    pointer becomes c_void_p, int / float their ctypes scalars, anything else an error."""
    m = re.search(r'extern\s+"C"\s+int\s+' + ENTRY + r"\s*\(([^)]*)\)", _strip_comments(text))
    if m is None:
        raise SignatureError(f'{origin}: no `extern "C" int {ENTRY}(...)` found')
    params = []
    for raw in m.group(1).split(","):
        decl = " ".join(raw.replace("*", " * ").split())
        p = re.fullmatch(r"(?:const )?(\w+)( \*)? (\w+)", decl)
        if p is None or (p.group(2) is None and p.group(1) not in _SCALARS):
            raise SignatureError(f"{origin}: parameter '{raw.strip()}' of {ENTRY} has a type this "
                                 f"binding does not map (int, float or a pointer); extend plugins/capi.py")
        params.append((p.group(3), ctypes.c_void_p if p.group(2) else _SCALARS[p.group(1)]))
    return params


class Launcher:
    """`Launcher(lib)(kind=0, half=1, ..., stream=None, path=2) -> return code`."""

    def __init__(self, lib_path: str | Path, source: str | Path = CAPI_SOURCE):
        self.source = Path(source)
        self.params = parse_signature(self.source.read_text(), str(self.source))
        try:
            self._fn = getattr(ctypes.CDLL(str(lib_path)), ENTRY)
        except (OSError, AttributeError) as e:
            raise SignatureError(f"{lib_path}: cannot load {ENTRY}: {e}") from None
        self._fn.argtypes = [t for _, t in self.params]
        self._fn.restype = ctypes.c_int

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.params]

    def __call__(self, **args) -> int:
        missing = [n for n in self.names if n not in args]
        unknown = sorted(set(args) - set(self.names))
        if missing or unknown:
            raise SignatureError(
                f"{ENTRY}({', '.join(self.names)}) in {self.source} does not match the call: "
                f"missing {missing}, unknown {unknown}; update the caller together with the C entry point")
        return self._fn(*(args[n] for n in self.names))
