"""The measurements of docs/weights.md.

    python scripts/measure_weights.py disk OUT      # tiny export --T 2,4 --N 2,4, du of OUT
    python scripts/measure_weights.py rtx BUCKET    # RTX plan size per builder flag set

`disk` lowers EXTERNAL_DATA_BYTES to 0 so the tiny preset's weights go to external data as
the full-size model's do; run it with PYTHONPATH set to the checkout to measure (main's
code gives the before figure). `rtx` builds BUCKET/model.onnx with TensorRT for RTX for
SM86 in a child process (runtime/trt/rtx_worker.py), once per flag set.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAG_SETS = ([], ["STRIP_PLAN"], ["REFIT_IDENTICAL"], ["STRIP_PLAN", "REFIT_IDENTICAL"],
             ["WEIGHT_STREAMING"])


def disk(out: Path) -> None:
    import torch

    import export.exporter as ex
    from export.buckets import make_buckets
    from export.pipeline import ExportOptions, export_buckets
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    ex.EXTERNAL_DATA_BYTES = 0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    export_buckets(VGGTMV(tiny_config()).eval(), make_buckets("2,4", "2,4", 28, 28), out,
                   ExportOptions(validate=False), {"source": "random init, seed 0"},
                   log=lambda s: None)
    print(f"export {time.perf_counter() - t0:.1f} s with {ex.__file__}")
    print(subprocess.run(["du", "-sb", str(out)], capture_output=True, text=True).stdout)
    for p in sorted(out.glob("*/model.onnx.data")):
        st = p.stat()
        print(f"{p}: inode {st.st_ino}, {st.st_nlink} links, {st.st_size:,} bytes")


def rtx(bucket: Path) -> None:
    from runtime.trt.rtx import subprocess_env

    for flags in FLAG_SETS:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            spec = {"graph": str(bucket / "model.onnx"), "engine": str(d / "engine"),
                    "capabilities": ["8.6"], "workspace_bytes": None, "plugin_library": None,
                    "flags": flags}
            (d / "spec.json").write_text(json.dumps(spec))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "runtime/trt/rtx_worker.py"),
                            str(d / "spec.json"), str(d / "out.json")], env=subprocess_env(),
                           capture_output=True, text=True)
            out = json.loads((d / "out.json").read_text())
            what = f"{(d / 'engine').stat().st_size:,} bytes" if out["ok"] else \
                f"refused: {out['error'][-160:]}"
            print(f"{flags or 'no flags'}: {what} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    {"disk": disk, "rtx": rtx}[sys.argv[1]](Path(sys.argv[2]))
