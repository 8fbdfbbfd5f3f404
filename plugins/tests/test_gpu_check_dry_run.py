"""scripts/gpu_check.sh --dry-run: its plumbing works without a GPU (case lists from the
kernel tests, timing shapes, sanitizer commands, the ctypes library build and load when
nvcc exists, the JSON / Markdown writers). The GPU part itself has not run here."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    env = {"PATH": __import__("os").environ["PATH"], "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["timings"] == []
    from plugins.tests import test_kernels_host as t

    want = (len(t.BIASED_CASES) + len(t.TC_BIASED) + len(t.SITE_BIASED)
            + len(t.SPARSE_CASES) + len(t.TC_SPARSE) + len(t.SITE_SPARSE))
    assert report["cases_total"] == want
    assert [s[0] for s in report["timing_shapes"]] == ["Time-SA", "View-SA", "DINOv2"]
    assert {c.split()[2] for c in report["sanitizer_commands"]} == {"memcheck", "racecheck", "initcheck", "synccheck"}
    if shutil.which("nvcc"):
        assert report["library_symbol"] == "vggt_attention_launch"
    assert (tmp_path / "gpu_check.md").read_text().startswith("# Attention kernels on none (dry run)")


def test_gpu_check_rejects_unknown_arguments():
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr
