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


PTXAS = """
ptxas info    : Compiling entry function '_ZN4vggt20attention_kernel_mmaILi64EEEvv' for 'sm_80'
ptxas info    : Function properties for _ZN4vggt20attention_kernel_mmaILi64EEEvv
    352 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 242 registers, used 1 barriers, 352 bytes cumulative stack size, 472 bytes cmem[0]
ptxas info    : Compile time = 212.817 ms
ptxas info    : Function properties for _ZN4vggt10TileLoaderILi64EE7generalERKNS_7KeyListEiPh
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""


def test_a_frame_line_belongs_to_the_function_it_follows():
    """ptxas prints an out-of-line callee's properties after the kernel's: its 0-byte frame
    must not overwrite the kernel's 352 (which once hid the kernel's stack frame)."""
    sr = load()
    info = sr.ptxas_info(PTXAS)
    assert list(info) == ["_ZN4vggt20attention_kernel_mmaILi64EEEvv"]
    assert info["_ZN4vggt20attention_kernel_mmaILi64EEEvv"] == {"regs": 242, "smem": 0, "spill": 0, "stack": 352}
    r = sr.KernelReport(80, "attention_kernel_mma<64, bias>", 242, 33792, 0, 352, 8, {"nested_loops": 0}, 3)
    assert sr.structural_failures(r) == ["352 bytes stack frame", "3 local-memory instructions"]
    assert "| 0 | 352 | 8 |" in sr.markdown([r])


def test_never_executed_placeholders_move_no_bytes():
    """ptxas pads cp.async sequences with `@!PT LDS RZ, [RZ]`: an issue slot, no access."""
    sr = load()
    sass = SASS.replace("        /*0040*/", "        /*0038*/              @!PT LDS RZ, [RZ] ;\n        /*0040*/")
    h = sr.hot_loop(sr.parse_sass(sass)["_ZN4vggt20attention_kernel_mmaILi64EEEvv"])
    assert h["instructions"] == 7 and h["never_executed"] == 1 and h["smem_bytes"] == 1024


NESTED = """
        Function : _ZN4vggt20attention_kernel_mmaILi64ELb1EEEvv
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/               @P0 BRA 0x60 ;
        /*0020*/                   HMMA.16816.F32 R8, R4, R6, R8 ;
        /*0030*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R10.64] ;
        /*0040*/               @P1 BRA 0x20 ;
        /*0050*/                   BRA 0x80 ;
        /*0060*/                   HMMA.16816.F32 R8, R4, R6, R8 ;
        /*0070*/                   LDS.64 R12, [R2] ;
        /*0080*/               @P2 BRA 0x10 ;
        /*0090*/                   EXIT ;
"""


def test_outer_loop_passes_are_bounded_per_segment():
    """The hot loop is the innermost HMMA loop; around it, the segments from the outer
    loop's head (into the hot loop: 1 instruction; through the masked tile: 4, one HMMA)
    and from the hot loop's exit (2) bound what the other tiles cost."""
    sr = load()
    h = sr.hot_loop(sr.parse_sass(NESTED)["_ZN4vggt20attention_kernel_mmaILi64ELb1EEEvv"])
    assert h["instructions"] == 3 and h["mma"] == 1
    op = h["outer_pass"]
    assert op["head"] == {"instructions": 1, "smem_bytes": 0}
    assert op["exit"] == {"instructions": 2, "smem_bytes": 0}
    assert op["per_tile"] == {"instructions": 3.0, "smem_bytes": 256.0}
    # Time-SA, 64-key tiles: 172 tiles, tile 0 and 171 not in the hot loop, one entry
    assert sr.tile_kinds(10992, lambda j: 10992, 64) == [False] + [True] * 170 + [False]
    a = sr.amortised(h, 64, True)["Time-SA"]
    heads, entries, other = 2 + 1 + 1, 1, 2
    assert a["instructions"] == 170 * 3 + heads * 1 + entries * 2 + other * 3
    # landmark sparse: the own frame's tiles, then a boundary tile and landmark singletons
    assert sr.tile_kinds(1374 + 64, lambda j: 1374 if j < 1374 else j + 1, 64) == \
        [False] + [True] * 20 + [False, False]


@pytest.fixture(scope="module")
def tc_reports(tmp_path_factory):
    """The tensor-core kernels' reports on sm_80 / 87 / 90 (compiled once for the module)."""
    sr = load()
    try:
        nvcc, cuobjdump = sr.find_tool("nvcc"), sr.find_tool("cuobjdump")
    except sr.ToolMissing as e:
        pytest.skip(str(e))
    tmp = tmp_path_factory.mktemp("sass")
    out = {}
    for arch in (80, 87, 90):
        out[arch] = [r for r in sr.report_arch(arch, nvcc, cuobjdump, tmp) if "mma" in r.kernel]
    return out


def test_tensor_core_kernels_have_no_stack_frame(tc_reports):
    """No stack frame, no local memory anywhere in the tensor-core kernels (an address-taken
    key list or an out-of-line call gave them a 352-byte frame and local loads in the hot
    loop), and sass_report --check agrees."""
    sr = load()
    for arch, reports in tc_reports.items():
        assert len(reports) == 4, reports   # D = 64 / 128, with and without bias
        for r in reports:
            assert r.stack_bytes == 0 and r.local_instructions == 0, r
            assert r.hot_loop["local_memory"] == 0, r
            assert sr.structural_failures(r) == [], r


def test_hot_loop_meets_targets(tc_reports):
    sr = load()
    for arch, reports in tc_reports.items():
        assert len(reports) == 4, reports
        for r in reports:
            h = r.hot_loop
            assert r.spill_bytes == 0 and r.resident_warps >= 8, r
            assert h["nested_loops"] == 0 and h["async_copies"] > 0 and h["barriers"] == 2, r
            # per Q K^T / P V MMA, the row-sum HMMAs not counted as work (the stricter reading)
            assert h["instr_per_qk_pv_mma"] <= sr.TARGETS["instr_per_mma"], r
            assert h["smem_bytes_per_qk_pv_mma"] <= sr.TARGETS["smem_bytes_per_mma"], r
