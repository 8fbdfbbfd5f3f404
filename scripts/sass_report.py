#!/usr/bin/env python3
"""Static SASS report of the attention kernels: what one hot-loop iteration issues.

Compiles plugins/csrc/attention/attention_launch.cu with nvcc to a cubin per arch, reads
the SASS with cuobjdump, and for every kernel prints registers, shared memory, spills,
stack frame and resident warps per SM (from ptxas and the arch's limits), and for the hot
loop (the innermost backward branch around HMMAs, the one with the most) per iteration:
instructions per MMA, shared-memory bytes per MMA (ldmatrix, LDS/STS and the shared side
of cp.async; an instruction guarded by @!PT never executes and moves nothing), async
copies and barriers. Loops nested inside the hot loop run a number of times the static
count cannot know, so they are reported (nested_loops) and the kernel must have none:
its head size is a compile-time constant and its fragment loops are fully unrolled.

The tensor-core kernel computes tiles inside one run of keys in the hot loop and the
others (run boundaries, landmark singletons, the padded end) around it; per site kind
(Time-SA, View-SA, DINOv2, landmark sparse: their real key sequences) the report also
amortises both, the outer loop's code bounded by its longest paths (pass_costs), and
states each issue #19 target met or not. --check exits 1 when a tensor-core kernel has a
stack frame, local memory, spills, < 8 warps per SM or a loop nested in its hot loop.

    python scripts/sass_report.py [--arch 80 87 90] [--json out.json] [--markdown out.md] [--check]

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
# Issue #19 part 3: FlashAttention-2's own figures at D = 64 (every HMMA counted), and
# the head-size-128 allowance for shared-memory bytes.
HMMA_TARGETS = {64: {"instr_per_hmma": 4.6, "smem_bytes_per_hmma": 179.0},
                128: {"instr_per_hmma": 4.6, "smem_bytes_per_hmma": 220.0}}
TRAITS_PROGRAM = r"""
#include "attention/attention_kernel_tc.cuh"
#include <cstdio>
template <int D> void show()
{
    using T = vggt::MmaTraits<D>;
    std::printf("%d %d %d %d\n", D, T::kSmemBytes, T::kMTiles * T::kPSteps, T::kBlockN);
}
int main() { show<64>(); show<128>(); }
"""


def mma_traits(workdir: Path) -> dict[int, dict]:
    """From the kernel header itself (host-compiled): per head size the dynamic shared
    memory of a block (ptxas -v reports static shared memory only), the HMMAs per
    iteration that compute row sums (P times a tile of ones) rather than Q K^T or P V,
    reported apart so the per-MMA figures read like FlashAttention-2's (row sums = FADDs),
    and the keys per tile (for the per-site amortisation)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise ToolMissing("g++ not found (needed to read the kernel's tile traits)")
    src, exe = workdir / "traits.cpp", workdir / "traits"
    src.write_text(TRAITS_PROGRAM)
    subprocess.run([cxx, "-std=c++20", "-pthread", "-I", str(ROOT / "plugins" / "csrc"), str(src), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        d, smem, rowsum, block_n = map(int, line.split())
        out[d] = {"dynamic_smem": smem, "rowsum_mma": rowsum, "block_n": block_n}
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
    local_instructions: int = 0   # LDL / STL anywhere in the kernel, not only its hot loop
    sites: dict = field(default_factory=dict)   # amortised per site kind (amortised())


def ptxas_info(stderr: str) -> dict[str, dict]:
    """Per entry function: registers, static shared memory, spill bytes and stack frame.
    ptxas prints "Function properties for NAME" before each function's frame line, for
    entries and for out-of-line device functions alike, so a frame line belongs to the
    function its own properties header names (attributing it to the last entry seen once
    gave a kernel with a 352-byte frame the 0 of a callee printed after it)."""
    info: dict[str, dict] = {}
    props = None
    for line in stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            props = info.setdefault(m.group(1), {"regs": 0, "smem": 0, "spill": 0, "stack": 0})
        elif m := re.search(r"Function properties for (\S+)", line):
            props = info.get(m.group(1))
        elif props is not None:
            if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
                props["stack"] = int(m.group(1))
                props["spill"] = int(m.group(2)) + int(m.group(3))
            if m := re.search(r"Used (\d+) registers", line):
                props["regs"] = int(m.group(1))
            if m := re.search(r"(\d+) bytes cumulative stack size", line):
                props["stack"] = max(props["stack"], int(m.group(1)))
            if m := re.search(r"(\d+) bytes smem", line):
                props["smem"] = int(m.group(1))
    return info


INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def parse_sass(text: str) -> dict[str, list[tuple[int, str, str, str]]]:
    """function name -> [(address, opcode with modifiers, operands, guard predicate or "")]."""
    out: dict[str, list] = {}
    cur = None
    for line in text.splitlines():
        if m := re.search(r"Function : (\S+)", line):
            cur = out.setdefault(m.group(1), [])
            continue
        if cur is not None and (m := INSTR.search(line)):
            cur.append((int(m.group(1), 16), m.group(3), m.group(4).strip(), (m.group(2) or "").strip()))
    return out


def moved_bytes(ins) -> int:
    """Shared-memory bytes an instruction moves; 0 for one guarded by @!PT, which never
    executes (ptxas pads cp.async sequences with `@!PT LDS RZ, [RZ]`): it still takes an
    issue slot, so it counts as an instruction, but it reads nothing."""
    return 0 if ins[3] == "@!PT" else smem_bytes(ins[1])


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


def branch_target(ins, addr_to_idx) -> int | None:
    if ins[1].startswith(("BRA", "CALL")) and (m := re.search(r"0x([0-9a-f]+)", ins[2])):
        return addr_to_idx.get(int(m.group(1), 16))
    return None


def loops(instrs) -> list[tuple[int, int]]:
    """(start index, end index) of every backward branch."""
    addr_to_idx = {ins[0]: i for i, ins in enumerate(instrs)}
    out = []
    for i, ins in enumerate(instrs):
        if ins[1].startswith("BRA") and (t := branch_target(ins, addr_to_idx)) is not None and t <= i:
            out.append((t, i))
    return out


def hmma_count(instrs, s: int, e: int) -> int:
    return sum(1 for ins in instrs[s:e + 1] if ins[1].startswith("HMMA"))


def pass_costs(instrs, outer: tuple[int, int], hot: tuple[int, int], tile_mma: int) -> dict:
    """Bounds on what the outer loop executes besides the hot loop's iterations. Its code is
    cut into segments, each running from the outer loop's head or an exit of the hot loop to
    the next entry into the hot loop, the back edge or the loop's exit, and the longest
    path (instructions; shared-memory bytes, separately) is taken over every segment
    computing k tiles of the masked step (k x tile_mma HMMAs on the path). Branches not
    taken cost nothing, so a switch costs its longest arm. Returns, per kind of start
    (`head`, `exit`), the longest segment that computes no tile, and `per_tile`, the most
    one tile adds on top of its start's figure (max over k >= 1 of (longest with k tiles -
    that) / k): a run executes at most head segments x head + hot-loop entries x exit +
    masked tiles x per_tile outside the hot loop (amortised())."""
    so, eo = outer
    sh, eh = hot
    a2i = {ins[0]: i for i, ins in enumerate(instrs)}
    exits = {eh + 1}
    for i in range(sh, eh + 1):
        t = branch_target(instrs[i], a2i)
        if t is not None and not sh <= t <= eh:
            exits.add(t)
    starts = sorted(exits) if sh <= so <= eh else sorted(exits | {so})
    ends: dict[tuple[str, int], list[int]] = {}   # (start kind, HMMAs) -> longest (instr, bytes)

    for start in starts:
        kind = "head" if start == so else "exit"

        def finish(n, cost):
            old = ends.get((kind, n), [0, 0])
            ends[(kind, n)] = [max(old[0], cost[0]), max(old[1], cost[1])]

        best: dict[tuple[int, int], list[int]] = {(start, 0): [0, 0]}
        for i in range(start, eo + 1):
            ins = instrs[i]
            for n in sorted({n for (j, n) in best if j == i}):
                ci, cs = best.pop((i, n))
                cost = [ci + (0 if ins[1].startswith("NOP") else 1), cs + moved_bytes(ins)]
                n2 = n + (1 if ins[1].startswith("HMMA") else 0)
                if ins[1].startswith(("EXIT", "RET")):
                    finish(n2, cost)
                    continue
                t = branch_target(ins, a2i)
                succ = [] if ins[1].startswith("BRA") and not ins[3] else [i + 1]
                if t is not None:
                    succ.append(t)
                elif ins[1].startswith("BRA"):
                    succ.append(i + 1)
                for j in succ:
                    if j <= i or j > eo or sh <= j <= eh:   # back edge, loop exit, hot loop
                        finish(n2, cost)
                    else:
                        old = best.get((j, n2), [-1, -1])
                        best[(j, n2)] = [max(old[0], cost[0]), max(old[1], cost[1])]
    base = {kind: [max((c[k] for (kd, n), c in ends.items() if kd == kind and n < tile_mma), default=0)
                   for k in (0, 1)] for kind in ("head", "exit")}
    per_tile = [0.0, 0.0]
    for (kind, n), c in ends.items():
        if n >= tile_mma:
            per_tile = [max(per_tile[k], (c[k] - base[kind][k]) / (n / tile_mma)) for k in (0, 1)]
    return {"head": {"instructions": base["head"][0], "smem_bytes": base["head"][1]},
            "exit": {"instructions": base["exit"][0], "smem_bytes": base["exit"][1]},
            "per_tile": {"instructions": round(per_tile[0], 1), "smem_bytes": round(per_tile[1], 1)},
            "head_in_hot_loop": sh <= so <= eh}


def hot_loop(instrs, rowsum_mma: int = 0) -> dict:
    """The innermost loop with HMMAs that has the most of them (ties: the shortest): the
    loop every tile inside one run of keys goes through. The loop around it, if any, is
    the outer loop whose other passes (tiles with a run boundary or padding) the per-site
    figures amortise (pass_costs)."""
    hl = [(s, e) for s, e in loops(instrs) if hmma_count(instrs, s, e)]
    inner = [(s, e) for s, e in hl if not any((a, b) != (s, e) and s <= a and b <= e for a, b in hl)]
    if not inner:
        return {}
    _, _, s, e = max((hmma_count(instrs, s, e), -(e - s), s, e) for s, e in inner)
    n_mma = hmma_count(instrs, s, e)
    body = [x for x in instrs[s:e + 1] if not x[1].startswith("NOP")]
    nested = [(a, b) for a, b in loops(instrs) if s <= a and b < e and (a, b) != (s, e)]
    sm = sum(moved_bytes(x) for x in body)
    outer = [(a, b) for a, b in hl if (a, b) != (s, e) and a <= s and e <= b]
    paths = pass_costs(instrs, min(outer, key=lambda ab: ab[1] - ab[0]), (s, e), n_mma) if outer else None
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
        "ldmatrix": sum(1 for x in body if x[1].startswith("LDSM")),
        "async_copies": sum(1 for x in body if x[1].startswith("LDGSTS")),
        "barriers": sum(1 for x in body if x[1].startswith("BAR")),
        "shuffles": sum(1 for x in body if x[1].startswith("SHFL")),
        "local_memory": sum(1 for x in body if x[1].startswith(("LDL", "STL"))),
        "never_executed": sum(1 for x in body if x[3] == "@!PT"),
        "nested_loops": len(nested),
        "outer_pass": paths,
    }


# The real key sequences of VGGT_MV's attention sites (T = 8, N = 4, 518 x 518: frames of
# F = 1,374 tokens; landmark_k = 64): name, kernel variant (bias or not), the key list's
# length and where its contiguous runs end (attention_kernel_tc.cuh run_end).
F_TOKENS, LANDMARKS = 1374, 64
SITES = [
    ("Time-SA", True, 8 * F_TOKENS, lambda j: 8 * F_TOKENS),
    ("View-SA", True, 4 * F_TOKENS, lambda j: 4 * F_TOKENS),
    ("DINOv2", False, F_TOKENS, lambda j: F_TOKENS),
    ("landmark sparse", False, F_TOKENS + LANDMARKS, lambda j: F_TOKENS if j < F_TOKENS else j + 1),
]


def tile_kinds(count: int, run_end, block_n: int) -> list[bool]:
    """Per key tile: loaded by contiguous() (computed in the hot loop) or not, as the
    kernel's issue() decides: tile t > 0 is contiguous when it ends inside the run that
    the last general() load looked up for the tile after it."""
    kinds, run_stop = [], 0
    for t in range((count + block_n - 1) // block_n):
        contig = t > 0 and (t + 1) * block_n <= run_stop
        if not contig:
            nxt = (t + 1) * block_n
            run_stop = run_end(nxt) if nxt < count else 0
        kinds.append(contig)
    return kinds


def amortised(h: dict, block_n: int, bias: bool) -> dict:
    """Per site that runs this kernel variant: instructions and shared-memory bytes per
    HMMA over all its key tiles, hot-loop tiles at the hot loop's static count, each other
    tile and each entry into the hot loop at its pass's longest path (pass_costs)."""
    out = {}
    paths = h.get("outer_pass")
    for name, site_bias, count, run_end in SITES:
        if site_bias != bias:
            continue
        kinds = tile_kinds(count, run_end, block_n)
        n, n_hot = len(kinds), sum(kinds)
        entries = sum(1 for i, k in enumerate(kinds) if k and (i == 0 or not kinds[i - 1]))
        if paths is None:   # one loop: every tile goes through it
            instr, sm = n * h["instructions"], n * h["smem_bytes"]
        else:
            # segments from the loop head: each computes a masked tile, enters the hot
            # loop or leaves the loop (once); from a hot-loop exit: one per entry
            heads = 0 if paths["head_in_hot_loop"] else (n - n_hot) + entries + 1
            per = {k: (n_hot * h[k] + heads * paths["head"][k] + entries * paths["exit"][k]
                       + (n - n_hot) * paths["per_tile"][k]) for k in ("instructions", "smem_bytes")}
            instr, sm = per["instructions"], per["smem_bytes"]
        out[name] = {"keys": count, "tiles": n, "hot_tiles": n_hot,
                     "instructions": instr, "smem_bytes": sm, "mma": n * h["mma"],
                     "instr_per_hmma": round(instr / (n * h["mma"]), 2),
                     "smem_bytes_per_hmma": round(sm / (n * h["mma"]), 1)}
    return out


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
        m = re.search(r"attention_kernel_mmaILi(\d+)E(?:Lb([01])E)?", name)
        t = traits[int(m.group(1))] if m else {"dynamic_smem": 0, "rowsum_mma": 0}
        smem = i["smem"] + t["dynamic_smem"]
        h = hot_loop(instrs, t["rowsum_mma"])
        sites = amortised(h, t["block_n"], m.group(2) == "1") if m and h else {}
        out.append(KernelReport(arch, short_name(name), i["regs"], smem, i["spill"], i["stack"],
                                resident_warps(arch, i["regs"], smem, BLOCK_THREADS[fam]), h,
                                sum(1 for x in instrs if x[1].startswith(("LDL", "STL"))), sites))
    return out


def short_name(mangled: str) -> str:
    m = re.search(r"(attention_kernel\w*?)I(\w+?)ELi(\d+)E", mangled)
    if m:
        return f"{m.group(1)}<{'fp32' if m.group(2) == 'f' else 'fp16'}, {m.group(3)}>"
    m = re.search(r"(attention_kernel\w*?)ILi(\d+)ELb([01])EE", mangled)
    if m:
        return f"{m.group(1)}<{m.group(2)}, {'bias' if m.group(3) == '1' else 'no bias'}>"
    m = re.search(r"(attention_kernel\w*?)ILi(\d+)EE", mangled)
    return f"{m.group(1)}<{m.group(2)}>" if m else mangled


def markdown(reports: list[KernelReport]) -> str:
    rows = ["| arch | kernel | regs | smem B | spill B | stack B | warps/SM | instr / HMMA | instr / QK+PV MMA | "
            "smem B / HMMA | smem B / QK+PV MMA | HMMA/iter (row-sum) | cp.async/iter | barriers/iter | "
            "local ld+st/iter | nested loops |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        h = r.hot_loop
        g = lambda k: h.get(k, "-")   # noqa: E731
        rows.append(f"| sm_{r.arch} | `{r.kernel}` | {r.registers} | {r.smem_bytes} | {r.spill_bytes} | "
                    f"{r.stack_bytes} | {r.resident_warps} | {g('instr_per_hmma')} | {g('instr_per_qk_pv_mma')} | "
                    f"{g('smem_bytes_per_hmma')} | {g('smem_bytes_per_qk_pv_mma')} | "
                    f"{g('mma')} ({h.get('rowsum_mma', 0)}) | {g('async_copies')} | {g('barriers')} | "
                    f"{g('local_memory')} | {g('nested_loops')} |")
    return "\n".join(rows) + "\n"


def head_size(r: KernelReport) -> int:
    m = re.search(r"<(\d+)", r.kernel)
    return int(m.group(1)) if m else 0


def structural_failures(r: KernelReport) -> list[str]:
    """What the tensor-core kernel must never have, whatever the per-HMMA figures: a stack
    frame or any local-memory access (an address-taken local or an ABI call spills to it,
    and the hot loop then waits on local loads), spills, fewer than 8 resident warps per
    SM, or a loop nested in the hot loop (its trip count would make the static
    per-iteration figures meaningless)."""
    h = r.hot_loop
    out = []
    if r.stack_bytes:
        out.append(f"{r.stack_bytes} bytes stack frame")
    if r.local_instructions:
        out.append(f"{r.local_instructions} local-memory instructions")
    if r.spill_bytes:
        out.append(f"{r.spill_bytes} bytes spilled")
    if r.resident_warps < TARGETS["min_resident_warps"]:
        out.append(f"{r.resident_warps} resident warps per SM")
    if not h or h.get("nested_loops"):
        out.append("no hot loop" if not h else f"{h['nested_loops']} loops nested in the hot loop")
    return out


def target_lines(reports: list[KernelReport]) -> list[str]:
    """One line per tensor-core kernel: each issue #19 target, met or not, with the figure."""
    lines = []
    for r in reports:
        d = head_size(r)
        if "mma" not in r.kernel or d not in HMMA_TARGETS:
            continue
        h, t = r.hot_loop, HMMA_TARGETS[d]
        parts = []
        for key, total, label in (("instr_per_hmma", "instructions", "instr/HMMA"),
                                  ("smem_bytes_per_hmma", "smem_bytes", "smem B/HMMA")):
            vals = [("hot loop", h.get(key))] + [(site, a[key]) for site, a in r.sites.items()]
            # against the unrounded ratios: a figure printed as the target may be above it
            ok = bool(h) and all(a[total] <= t[key] * a["mma"] for a in [h, *r.sites.values()])
            parts.append(f"{label} <= {t[key]} {'met' if ok else 'NOT met'} ("
                         + ", ".join(f"{n} {v}" for n, v in vals) + ")")
        bad = structural_failures(r)
        parts.append("no stack frame / local memory / spills, >= 8 warps/SM, no nested loop: " + ("met" if not bad else "NOT met (" + ", ".join(bad) + ")"))
        lines.append(f"sm_{r.arch} {r.kernel}: " + "; ".join(parts))
    return lines


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
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a tensor-core kernel has a stack frame, local memory, spills, "
                         "< 8 warps/SM or a nested hot loop")
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
    for line in target_lines(reports):
        print(line)
    if args.json:
        write_atomic(args.json, json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    if args.markdown:
        write_atomic(args.markdown, table)
    bad = [(r, structural_failures(r)) for r in reports if "mma" in r.kernel]
    bad = [(r, f) for r, f in bad if f]
    for r, f in bad:
        print(f"sass_report: sm_{r.arch} {r.kernel}: " + ", ".join(f), file=sys.stderr)
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
