#!/usr/bin/env python3
"""Static SASS report of the attention kernels: what one hot-loop iteration issues.

Compiles plugins/csrc/attention/attention_launch.cu with nvcc to a cubin per arch, reads
the SASS with cuobjdump, and for every kernel prints registers, shared memory, spills and
resident warps per SM (from ptxas and the arch's limits), and for the hot loop (the
backward branch whose body holds the most HMMAs) per iteration: instructions per MMA,
shared-memory bytes per MMA (ldmatrix, LDS/STS and the shared side of cp.async), async
copies and barriers. Loops nested inside the hot loop run a number of times the static
count cannot know, so they are reported (nested_loops) and the kernel must have none:
its head size is a compile-time constant and its fragment loops are fully unrolled.

    python scripts/sass_report.py [--arch 80 87 90] [--json out.json] [--markdown out.md]

Needs nvcc and cuobjdump (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm puts it
in the virtualenv's nvidia/*/bin, which this script searches). Nothing here runs a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from plugins.capi_build import shipped_nvcc_flags  # noqa: E402
SRC = ROOT / "plugins" / "csrc" / "attention" / "attention_launch.cu"
INSTALL_HINT = "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (or put the CUDA toolkit's bin/ on PATH)"

# Per-SM limits: max resident warps, shared memory per SM usable by blocks (bytes), max
# blocks per SM. Register file 64K x 32-bit on all of them. CUDA programming guide,
# "Compute capabilities" table.
ARCH_LIMITS = {
    80: (64, 164 * 1024, 32),
    86: (48, 100 * 1024, 16),
    87: (48, 164 * 1024, 16),
    89: (48, 100 * 1024, 24),
    90: (64, 228 * 1024, 32),
}
# Threads per block of each kernel family (attention_launch.cu).
BLOCK_THREADS = {"attention_kernel_mma": 128, "attention_kernel": 32}

TARGETS = {"instr_per_mma": 6.0, "smem_bytes_per_mma": 256.0, "min_resident_warps": 8}
TRAITS_PROGRAM = r"""
#include "attention/attention_kernel_tc.cuh"
#include <cstdio>
template <int D> void show()
{
    using T = vggt::MmaTraits<D>;
    std::printf("%d %d %d\n", D, T::kSmemBytes, T::kMTiles * T::kPSteps);
}
int main() { show<64>(); show<128>(); }
"""


def mma_traits(workdir: Path) -> dict[int, dict]:
    """From the kernel header itself (host-compiled): per head size the dynamic shared
    memory of a block (ptxas -v reports static shared memory only) and the HMMAs per
    iteration that compute row sums (P times a tile of ones) rather than Q K^T or P V,
    reported apart so the per-MMA figures read like FlashAttention-2's (row sums = FADDs)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise ToolMissing("g++ not found (needed to read the kernel's tile traits)")
    src, exe = workdir / "traits.cpp", workdir / "traits"
    src.write_text(TRAITS_PROGRAM)
    subprocess.run([cxx, "-std=c++20", "-pthread", "-I", str(ROOT / "plugins" / "csrc"), str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        d, smem, rowsum = map(int, line.split())
        out[d] = {"dynamic_smem": smem, "rowsum_mma": rowsum}
    return out


class ToolMissing(RuntimeError):
    pass


def find_tool(name: str) -> str:
    """`name` on PATH, else in an installed nvidia-* wheel's bin/ (pip packages)."""
    hit = shutil.which(name)
    if hit:
        return hit
    for base in {Path(sys.prefix), Path(sys.executable).resolve().parent.parent}:
        for cand in sorted(base.glob(f"lib/python3*/site-packages/nvidia/*/bin/{name}")):
            if os.access(cand, os.X_OK):
                return str(cand)
    if name == "nvcc" and os.environ.get("CUDACXX"):
        return os.environ["CUDACXX"]
    raise ToolMissing(f"{name} not found: {INSTALL_HINT}")


@dataclass
class KernelReport:
    arch: int
    kernel: str
    registers: int
    smem_bytes: int
    spill_bytes: int
    stack_bytes: int
    resident_warps: int
    hot_loop: dict = field(default_factory=dict)


def ptxas_info(stderr: str) -> dict[str, dict]:
    info: dict[str, dict] = {}
    cur = None
    for line in stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            cur = info.setdefault(m.group(1), {"regs": 0, "smem": 0, "spill": 0, "stack": 0})
        elif cur is not None:
            if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
                cur["stack"] = int(m.group(1))
                cur["spill"] = int(m.group(2)) + int(m.group(3))
            if m := re.search(r"Used (\d+) registers", line):
                cur["regs"] = int(m.group(1))
            if m := re.search(r"(\d+) bytes smem", line):
                cur["smem"] = int(m.group(1))
    return info


INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def parse_sass(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """function name -> [(address, opcode with modifiers, operands)]."""
    out: dict[str, list] = {}
    cur = None
    for line in text.splitlines():
        if m := re.search(r"Function : (\S+)", line):
            cur = out.setdefault(m.group(1), [])
            continue
        if cur is not None and (m := INSTR.search(line)):
            cur.append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return out


# ldmatrix in SASS: LDSM.16.M88[.2|.4] and the transposing LDSM.16.MT88[.2|.4]; each 8x8
# matrix of 16-bit elements is 128 bytes per warp (x1 128, x2 256, x4 512).
LDSM_FORM = re.compile(r"LDSM\.16\.MT?88(?:\.([124]))?")


def smem_bytes(op: str) -> int:
    """Shared-memory bytes one warp-wide instruction moves (32 lanes)."""
    base = op.split(".")[0]
    mods = op.split(".")[1:]
    if base == "LDSM":
        m = LDSM_FORM.fullmatch(op)
        if m is None:   # a form this count does not know must not pass as some size
            raise ValueError(f"unknown ldmatrix form {op!r}; add its size to sass_report.LDSM_FORM")
        return 128 * int(m.group(1) or 1)
    if base in ("LDS", "STS", "LDGSTS", "ATOMS"):
        width = 4
        for m in mods:
            if m in ("64",):
                width = 8
            elif m in ("128",):
                width = 16
            elif m in ("U8", "S8"):
                width = 1
            elif m in ("U16", "S16"):
                width = 2
        return 32 * width
    return 0


def loops(instrs) -> list[tuple[int, int]]:
    """(start index, end index) of every backward branch."""
    addr_to_idx = {a: i for i, (a, _, _) in enumerate(instrs)}
    out = []
    for i, (a, op, args) in enumerate(instrs):
        if op.startswith("BRA") and (m := re.search(r"0x([0-9a-f]+)", args)):
            tgt = int(m.group(1), 16)
            if tgt <= a and tgt in addr_to_idx:
                out.append((addr_to_idx[tgt], i))
    return out


def hot_loop(instrs, rowsum_mma: int = 0) -> dict:
    cands = []
    for s, e in loops(instrs):
        n_mma = sum(1 for _, op, _ in instrs[s:e + 1] if op.startswith("HMMA"))
        if n_mma:
            cands.append((n_mma, -(e - s), s, e))
    if not cands:
        return {}
    n_mma, _, s, e = max(cands)
    body = [x for x in instrs[s:e + 1] if not x[1].startswith("NOP")]
    nested = [(a, b) for a, b in loops(instrs) if s <= a and b < e and (a, b) != (s, e)]
    sm = sum(smem_bytes(op) for _, op, _ in body)
    return {
        "instructions": len(body),
        "mma": n_mma,
        "rowsum_mma": rowsum_mma,
        # per HMMA, every one counted (how FlashAttention-2's figures are counted), and per
        # Q K^T / P V MMA, the row-sum HMMAs left out as FlashAttention-2's FADDs would be
        "instr_per_hmma": round(len(body) / n_mma, 2),
        "instr_per_qk_pv_mma": round(len(body) / max(n_mma - rowsum_mma, 1), 2),
        "smem_bytes": sm,
        "smem_bytes_per_hmma": round(sm / n_mma, 1),
        "smem_bytes_per_qk_pv_mma": round(sm / max(n_mma - rowsum_mma, 1), 1),
        "ldmatrix": sum(1 for _, op, _ in body if op.startswith("LDSM")),
        "async_copies": sum(1 for _, op, _ in body if op.startswith("LDGSTS")),
        "barriers": sum(1 for _, op, _ in body if op.startswith("BAR")),
        "shuffles": sum(1 for _, op, _ in body if op.startswith("SHFL")),
        "local_memory": sum(1 for _, op, _ in body if op.startswith(("LDL", "STL"))),
        "nested_loops": len(nested),
    }


def resident_warps(arch: int, regs: int, smem: int, threads: int) -> int:
    max_warps, smem_sm, max_blocks = ARCH_LIMITS[arch]
    warps = (threads + 31) // 32
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256   # allocation unit 256 registers
    by_regs = 65536 // (regs_per_warp * warps)
    by_smem = smem_sm // (smem + 1024) if smem else max_blocks   # 1 KB reserved per block
    by_warps = max_warps // warps
    return min(by_regs, by_smem, by_warps, max_blocks) * warps


def demangled_family(name: str) -> str:
    for fam in sorted(BLOCK_THREADS, key=len, reverse=True):
        if fam in name:
            return fam
    return ""


def report_arch(arch: int, nvcc: str, cuobjdump: str, workdir: Path, defines=()) -> list[KernelReport]:
    cubin = workdir / f"attention_sm{arch}.cubin"
    # the flags libvggt_mv_plugins.so ships with (plugins/CMakeLists.txt): the SASS counted
    # is the SASS that runs
    cmd = [nvcc, *shipped_nvcc_flags(), f"-arch=sm_{arch}", "-cubin", "-Xptxas", "-v",
           *[f"-D{d}" for d in defines], "-o", str(cubin), str(SRC)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for sm_{arch}:\n{res.stderr[-3000:]}")
    info = ptxas_info(res.stderr)
    traits = mma_traits(workdir)
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    out = []
    for name, instrs in sorted(parse_sass(sass).items()):
        fam = demangled_family(name)
        if not fam or name not in info:
            continue
        i = info[name]
        m = re.search(r"attention_kernel_mmaILi(\d+)E", name)
        t = traits[int(m.group(1))] if m else {"dynamic_smem": 0, "rowsum_mma": 0}
        smem = i["smem"] + t["dynamic_smem"]
        out.append(KernelReport(arch, short_name(name), i["regs"], smem, i["spill"], i["stack"],
                                resident_warps(arch, i["regs"], smem, BLOCK_THREADS[fam]),
                                hot_loop(instrs, t["rowsum_mma"])))
    return out


def short_name(mangled: str) -> str:
    m = re.search(r"(attention_kernel\w*?)I(\w+?)ELi(\d+)E", mangled)
    if m:
        return f"{m.group(1)}<{'fp32' if m.group(2) == 'f' else 'fp16'}, {m.group(3)}>"
    m = re.search(r"(attention_kernel\w*?)ILi(\d+)EE", mangled)
    return f"{m.group(1)}<{m.group(2)}>" if m else mangled


def markdown(reports: list[KernelReport]) -> str:
    rows = ["| arch | kernel | regs | smem B | spill B | warps/SM | instr / HMMA | instr / QK+PV MMA | "
            "smem B / HMMA | smem B / QK+PV MMA | HMMA/iter (row-sum) | cp.async/iter | barriers/iter | "
            "local ld+st/iter | nested loops |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        h = r.hot_loop
        g = lambda k: h.get(k, "-")   # noqa: E731
        rows.append(f"| sm_{r.arch} | `{r.kernel}` | {r.registers} | {r.smem_bytes} | {r.spill_bytes} | "
                    f"{r.resident_warps} | {g('instr_per_hmma')} | {g('instr_per_qk_pv_mma')} | "
                    f"{g('smem_bytes_per_hmma')} | {g('smem_bytes_per_qk_pv_mma')} | "
                    f"{g('mma')} ({h.get('rowsum_mma', 0)}) | {g('async_copies')} | {g('barriers')} | "
                    f"{g('local_memory')} | {g('nested_loops')} |")
    return "\n".join(rows) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 87, 90], choices=sorted(ARCH_LIMITS))
    ap.add_argument("--json", type=Path, help="write the reports as JSON")
    ap.add_argument("--markdown", type=Path, help="write the table as Markdown")
    ap.add_argument("--all-kernels", action="store_true", help="also the CUDA-core kernels")
    ap.add_argument("-D", dest="defines", action="append", default=[], help="extra -D for nvcc (mutations)")
    args = ap.parse_args(argv)
    try:
        nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    except ToolMissing as e:
        print(f"sass_report: {e}", file=sys.stderr)
        return 2
    reports: list[KernelReport] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            reports += report_arch(arch, nvcc, cuobjdump, Path(tmp), args.defines)
    if not args.all_kernels:
        reports = [r for r in reports if "mma" in r.kernel]
    table = markdown(reports)
    print(table, end="")
    if args.json:
        write_atomic(args.json, json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    if args.markdown:
        write_atomic(args.markdown, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
