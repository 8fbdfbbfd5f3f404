"""Running a bucket graph in onnxruntime on the CPU for validation; the comparison of its
outputs is export/compare.py."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


def run_onnx(path: str | Path, feeds: Mapping[str, np.ndarray], plugins: bool,
             threads: int | None = None, disabled_optimizers: list[str] | None = None
             ) -> dict[str, np.ndarray]:
    """Runs a bucket graph in onnxruntime on the CPU (plugin ops via the CPU reference).
    ``disabled_optimizers`` default: what runtime.layout.ort_disabled_optimizers says the
    graph needs."""
    import onnxruntime as ort

    src: str | bytes = str(path)
    if plugins:
        from plugins.reference.ort_ops import session_options, session_source
        so = session_options()
        src = session_source(path, so)
    else:
        so = ort.SessionOptions()
    from runtime.layout import ort_disabled_optimizers

    disabled = ort_disabled_optimizers(path) if disabled_optimizers is None \
        else disabled_optimizers
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"],
                                **({"disabled_optimizers": disabled} if disabled else {}))
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}
    outs = sess.run(names, {k: v for k, v in feeds.items() if k in inputs})
    return dict(zip(names, outs))
