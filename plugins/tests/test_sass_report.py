"""scripts/sass_report.py on the real kernels: the static per-iteration figures of the
tensor-core kernel's hot loop meet the issue's targets on sm_80, sm_87 and sm_90 (head
sizes 64 and 128), and the parser itself is checked on a
hand-written SASS excerpt so a broken regex cannot pass silently."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("sass_report", ROOT / "scripts" / "sass_report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sass_report"] = mod
    spec.loader.exec_module(mod)
    return mod


SASS = """
        Function : _ZN4vggt20attention_kernel_mmaILi64EEEvv
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDSM.16.M88.4 R4, [R2] ;
        /*0020*/                   HMMA.16816.F32 R8, R4, R6, R8 ;
        /*0030*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R10.64] ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/                   HMMA.16816.F32 R12, R4, R6, R12 ;
        /*0060*/               @P0 BRA 0x10 ;
        /*0070*/                   EXIT ;
"""


def test_parser_counts_a_known_loop():
    sr = load()
    instrs = sr.parse_sass(SASS)["_ZN4vggt20attention_kernel_mmaILi64EEEvv"]
    h = sr.hot_loop(instrs)
    assert h["mma"] == 2 and h["instructions"] == 6 and h["ldmatrix"] == 1
    assert h["smem_bytes"] == 512 + 512 and h["async_copies"] == 1 and h["barriers"] == 1
    assert h["nested_loops"] == 0
    assert sr.resident_warps(80, 255, 33792, 128) == 8
    assert sr.resident_warps(80, 200, 66048, 128) == 8      # 2 blocks of 65.5 KB in 164 KB
    assert sr.resident_warps(86, 200, 66048, 128) == 4      # 100 KB: one block
    assert sr.resident_warps(80, 128, 33792, 128) == 16


@pytest.mark.parametrize("op,nbytes", [
    ("LDSM.16.M88", 128), ("LDSM.16.M88.2", 256), ("LDSM.16.M88.4", 512),
    ("LDSM.16.MT88", 128), ("LDSM.16.MT88.2", 256), ("LDSM.16.MT88.4", 512),
])
def test_every_ldmatrix_form_counts_its_size(op, nbytes):
    """x1 / x2 / x4 move 1 / 2 / 4 8x8 matrices of 16-bit elements (128 B each) per warp,
    transposed (.MT88, V's load) or not."""
    sr = load()
    assert sr.smem_bytes(op) == nbytes
    instrs = sr.parse_sass(SASS.replace("LDSM.16.M88.4", op))["_ZN4vggt20attention_kernel_mmaILi64EEEvv"]
    assert sr.hot_loop(instrs)["smem_bytes"] == nbytes + 512


def test_unknown_ldmatrix_form_is_refused():
    sr = load()
    with pytest.raises(ValueError, match="unknown ldmatrix form 'LDSM.16.M816.4'"):
        sr.smem_bytes("LDSM.16.M816.4")


def test_per_hmma_and_per_qk_pv_mma_are_both_reported():
    sr = load()
    instrs = sr.parse_sass(SASS)["_ZN4vggt20attention_kernel_mmaILi64EEEvv"]
    h = sr.hot_loop(instrs, rowsum_mma=1)
    assert h["instr_per_hmma"] == 3.0 and h["instr_per_qk_pv_mma"] == 6.0
    assert h["smem_bytes_per_hmma"] == 512.0 and h["smem_bytes_per_qk_pv_mma"] == 1024.0
    table = sr.markdown([sr.KernelReport(80, "attention_kernel_mma<64>", 1, 2, 0, 0, 8, h)])
    assert "| 8 | 3.0 | 6.0 | 512.0 | 1024.0 |" in table


def test_missing_cuobjdump_is_named(monkeypatch, capsys):
    sr = load()
    monkeypatch.setattr(sr.shutil, "which", lambda name: None)
    monkeypatch.setattr(sr.sys, "prefix", "/nonexistent")
    monkeypatch.setattr(sr.sys, "executable", "/nonexistent/bin/python")
    monkeypatch.delenv("CUDACXX", raising=False)
    assert sr.main(["--arch", "80"]) == 2
    assert "pip install nvidia-cuda-cuobjdump" in capsys.readouterr().err


def test_hot_loop_meets_targets(tmp_path):
    sr = load()
    try:
        nvcc, cuobjdump = sr.find_tool("nvcc"), sr.find_tool("cuobjdump")
    except sr.ToolMissing as e:
        pytest.skip(str(e))
    for arch in (80, 87, 90):
        reports = [r for r in sr.report_arch(arch, nvcc, cuobjdump, tmp_path) if "mma" in r.kernel]
        assert len(reports) == 2, reports
        for r in reports:
            h = r.hot_loop
            assert r.spill_bytes == 0 and r.resident_warps >= 8, r
            assert h["nested_loops"] == 0 and h["async_copies"] > 0 and h["barriers"] == 2, r
            # per Q K^T / P V MMA, the row-sum HMMAs not counted as work (the stricter reading)
            assert h["instr_per_qk_pv_mma"] <= sr.TARGETS["instr_per_mma"], r
            assert h["smem_bytes_per_qk_pv_mma"] <= sr.TARGETS["smem_bytes_per_mma"], r
