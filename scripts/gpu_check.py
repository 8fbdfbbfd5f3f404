#!/usr/bin/env python3
"""One-shot check of the attention kernels on a GPU (driven by scripts/gpu_check.sh).

Steps, in order of value, each in a child process under its own time budget and all under
one overall deadline: probe (PyTorch, the GPU), build (nvcc with the shipped flags plus
-lineinfo), cases (every case of plugins/kernel_cases.py vs numpy_ref), sites (the four
dense sites of T=8, N=4, 518x518 vs torch SDPA on all rows, with and without the bias),
timing (ours vs SDPA flash there), then compute-sanitizer memcheck / racecheck / initcheck
/ synccheck on small cases. Every step ends ok, failed or skipped with its time; the report
(gpu_check.json + gpu_check.md) is written whatever happens, naming the step that failed.

--dry-run runs the same steps without a GPU against the host build of the entry point (g++
through the CUDA host shim): every launch executes on the CPU, the sites at reduced
lengths, the timing loop once, the sanitizer cases without compute-sanitizer; the nvcc
build is compiled when nvcc exists.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from plugins import capi_build  # noqa: E402

SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
# seconds per step on the GPU run; the deadline cuts whatever the earlier steps overran
BUDGETS = {"probe": 60, "build": 150, "nvcc_build": 150, "cases": 90, "sites": 60, "timing": 60,
           **{t: 40 for t in SANITIZER_TOOLS}, "racecheck": 60}
DEADLINE_S, DRY_DEADLINE_S, DRY_BUDGET_SCALE = 480.0, 3600.0, 20.0
REPORT_RESERVE_S = 5
DEADLINE_SKIP = "deadline reached before it could start"
LOG_TAIL = 20_000


class Run:
    """The steps' outcomes and the clock, shared by the driver and the report writer."""

    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.steps: dict[str, dict] = {}
        self.data: dict[str, dict] = {}
        self.logs = args.out / "logs"

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.t0) - REPORT_RESERVE_S

    def budget(self, name: str) -> float:
        return min(self.args.budget_scale * BUDGETS[name], self.left())

    def record(self, name: str, status: str, seconds: float, detail: str = "") -> None:
        self.steps[name] = {"status": status, "seconds": round(seconds, 1), "detail": detail}
        print(f"gpu_check: {name}: {status} ({seconds:.1f} s){': ' + detail if detail else ''}", flush=True)

    def skip(self, name: str, why: str) -> None:
        self.record(name, "skipped", 0.0, why)

    def child(self, name: str, step_args: list[str], prefix: list[str] = (), env: dict | None = None) -> dict | None:
        """Runs `gpu_check.py --step ...` (under `prefix`, e.g. compute-sanitizer) within the
        step's budget; records the outcome and returns the step's result (None if it has none)."""
        budget = self.budget(name)
        if budget < 1:
            self.skip(name, DEADLINE_SKIP)
            return None
        work = Path(self.args.work)
        for suffix in (".json", ".progress.jsonl"):
            (work / f"{step_args[0]}{suffix}").unlink(missing_ok=True)
        cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), "--step", *step_args, "--work", str(work)]
        if self.args.dry_run:
            cmd.append("--dry-run")
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, env={**os.environ, **(env or {})},
                                 cwd=ROOT)
            rc, out = res.returncode, res.stdout + res.stderr
        except subprocess.TimeoutExpired as e:
            rc, out = None, _text(e.stdout) + _text(e.stderr)
        seconds = time.monotonic() - t0
        self.logs.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.logs / f"{name}.log", " ".join(cmd) + "\n" + out[-LOG_TAIL:])
        result_path = work / f"{step_args[0]}.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
        progress = _progress(work / f"{step_args[0]}.progress.jsonl")
        if result is not None:
            self.data[name] = result
        elif progress:
            self.data[name] = {"partial": progress}
        if rc is None:
            self.record(name, "failed", seconds, f"timed out after {budget:.0f} s budget ({len(progress)} "
                                                 f"items done; last: {progress[-1] if progress else 'none'})")
        elif rc != 0 or result is None:
            self.record(name, "failed", seconds, f"exit {rc}: {_last_line(out)}")
        else:
            self.record(name, result["status"], seconds, result.get("summary", ""))
        return result


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _last_line(out: str) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _progress(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def build_step(run: Run, name: str, kind: str, tool: str | None, arch: str) -> str | None:
    """Builds the library (cached); records the step; returns the library path or None."""
    if tool is None:
        run.skip(name, "nvcc not found ($NVCC, PATH, $CUDA_HOME/bin)" if kind == "nvcc" else "g++ not found")
        return None
    budget = run.budget(name)
    if budget < 1:
        run.skip(name, DEADLINE_SKIP)
        return None
    t0 = time.monotonic()
    try:
        lib, cmd = capi_build.build(kind, tool, arch, timeout=max(budget, 1))
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        run.record(name, "failed", time.monotonic() - t0, str(e).splitlines()[0][:300])
        return None
    run.data[name] = {"command": " ".join(cmd), "library": str(lib)}
    run.record(name, "ok", time.monotonic() - t0, " ".join(Path(c).name if c.startswith("/") else c for c in cmd))
    return str(lib)


def sanitizer_step(run: Run, tool: str, lib: str | None, nvcc: str | None) -> None:
    if lib is None:
        return run.skip(tool, "no library (build step failed or skipped)")
    lib_args = ["sanitize", "--lib", lib, *run.capi_args]
    if run.args.dry_run:
        # no GPU: the same child and cases without the wrapper, so the path is exercised
        run.child(tool, lib_args)
        if run.steps[tool]["status"] == "ok":
            run.steps[tool]["detail"] = "cases run without compute-sanitizer (dry run)"
        return None
    try:
        sanitizer = capi_build.find_sanitizer(nvcc)
    except capi_build.ToolMissing as e:
        return run.skip(tool, str(e))
    # exact-size cudaMalloc per tensor: in PyTorch's caching allocator an overrun lands in a
    # neighbour's block, where memcheck cannot see it
    run.child(tool, lib_args, prefix=[sanitizer, "--tool", tool, "--error-exitcode", "9"],
              env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    return None


def drive(run: Run) -> None:
    args = run.args
    run.capi_args = ["--capi-source", str(args.capi_source)] if args.capi_source else []
    probe = run.child("probe", ["probe"])
    arch = args.arch or (probe or {}).get("arch") or "80"
    run.data["arch"] = arch
    nvcc = capi_build.find_nvcc()
    if args.dry_run:
        if args.skip_nvcc_build:
            run.skip("nvcc_build", "--skip-nvcc-build")
        else:
            build_step(run, "nvcc_build", "nvcc", nvcc, arch)
        lib = build_step(run, "build", "host", shutil.which("g++") or shutil.which("c++"), arch)
    elif probe is None:
        lib = None
        run.skip("build", "the probe found no usable GPU / PyTorch")
    else:
        lib = build_step(run, "build", "nvcc", nvcc, arch)
    for step in ("cases", "sites", "timing"):
        if lib is None:
            run.skip(step, "no library (build step failed or skipped)")
        else:
            run.child(step, [step, "--lib", lib, *run.capi_args, *(["--case-limit", str(args.case_limit)]
                                                                  if args.case_limit and step == "cases" else [])])
    for tool in SANITIZER_TOOLS:
        sanitizer_step(run, tool, lib, nvcc)


def report(run: Run) -> dict:
    a = run.args
    probe = run.data.get("probe", {})
    return {"dry_run": a.dry_run, "gpu": probe.get("gpu", "unknown (probe failed)"), "arch": run.data.get("arch"),
            "torch": probe.get("torch"), "command": "bash scripts/gpu_check.sh" + (" --dry-run" if a.dry_run else ""),
            "deadline_s": a.deadline, "seconds": round(time.monotonic() - run.t0, 1),
            "failed_steps": [n for n, s in run.steps.items() if s["status"] == "failed"],
            "steps": run.steps, "build": run.data.get("build", {}), "nvcc_build": run.data.get("nvcc_build", {}),
            "cases": run.data.get("cases", {}), "sites": run.data.get("sites", {}),
            "timing": run.data.get("timing", {})}


def markdown(r: dict) -> str:
    md = [f"# Attention kernels on {r['gpu']}", "",
          f"`{r['command']}`: dry run {r['dry_run']}, sm_{r['arch']}, torch {r['torch']}, "
          f"{r['seconds']} s of a {r['deadline_s']} s deadline.", ""]
    md.append(f"**Failed steps: {', '.join(r['failed_steps'])}**" if r["failed_steps"] else "No step failed.")
    md += ["", "| step | status | s | detail |", "|---|---|---|---|"]
    md += [f"| {n} | {s['status']} | {s['seconds']} | {s['detail'].replace('|', '/')} |" for n, s in r["steps"].items()]
    for key in ("build", "nvcc_build"):
        if r[key].get("command"):
            md += ["", f"{key}: `{r[key]['command']}`"]
    cases = r["cases"]
    if "total" in cases:
        md += ["", f"Kernel cases: {cases['passed']} / {cases['total']} passed."]
        md += [f"- FAILED {f}" for f in cases["failures"]]
    elif cases.get("partial"):
        md += ["", f"Kernel cases: interrupted after {len(cases['partial'])}."]
    sites = r["sites"].get("rows") or r["sites"].get("partial") or []
    if sites:
        md += ["", "| site | B, H, L, D | bias | rows compared | max abs err vs SDPA (fp32) | elements past tol | ok |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {s['site']} | {s['shape']} | {s['bias']} | {s['rows']} | {s['max_abs_err']} | "
               f"{s['elements_past_tol']} | {s['ok']} |" for s in sites]
    timing = r["timing"].get("rows") or r["timing"].get("partial") or []
    if timing:
        md += ["", "| site | B, H, L, D | kernel | ms | TFLOP/s |", "|---|---|---|---|---|"]
        md += [f"| {t['site']} | {t['shape']} | {t['kernel']} | {t['ms']} | {t['tflops']} |" for t in timing]
    if r["dry_run"]:
        md += ["", "Dry run: host build on the CPU; site lengths reduced, times are the CPU shim's, not a GPU's."]
    return "\n".join(md) + "\n"


def write_reports(out: Path, r: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "gpu_check.json", json.dumps(r, indent=2) + "\n")
    _write_atomic(out / "gpu_check.md", markdown(r))


def child_main(args) -> int:
    """`--step NAME`: one step in this process; its result goes to WORK/NAME.json."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_check_steps

    if args.case_limit:
        import plugins.kernel_cases as kc

        full = kc.gpu_cases
        gpu_check_steps.gpu_cases = lambda: full()[:args.case_limit]
    result = gpu_check_steps.run_step(args.step, args.lib, Path(args.work), args.dry_run, args.capi_source)
    _write_atomic(Path(args.work) / f"{args.step}.json", json.dumps(result) + "\n")
    return 0 if result["status"] == "ok" else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu_check")
    ap.add_argument("--arch", default="", help="sm_XX to build for (default: the GPU's)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--deadline", type=float, help="seconds for the whole run (default 8 min; dry run 60 min)")
    ap.add_argument("--budget-scale", type=float,
                    help="multiplies every step's budget (default 1; dry run 20: the CPU shim is slow)")
    ap.add_argument("--capi-source", type=Path, help=argparse.SUPPRESS)   # tests: another C signature
    ap.add_argument("--case-limit", type=int, default=0, help=argparse.SUPPRESS)   # tests: the first N cases
    ap.add_argument("--skip-nvcc-build", action="store_true", help=argparse.SUPPRESS)   # tests: dry run only
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--lib", default="", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        return child_main(args)
    args.deadline = args.deadline or (DRY_DEADLINE_S if args.dry_run else DEADLINE_S)
    args.budget_scale = args.budget_scale or (DRY_BUDGET_SCALE if args.dry_run else 1.0)
    if args.deadline <= REPORT_RESERVE_S:
        ap.error(f"--deadline must be above {REPORT_RESERVE_S} s")
    run = Run(args)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        args.work = work
        try:
            drive(run)
        except BaseException as e:   # the report still says how far it got
            run.record("driver", "failed", time.monotonic() - run.t0, f"{type(e).__name__}: {e}")
            raise
        finally:
            r = report(run)
            write_reports(args.out, r)
            print(f"gpu_check: report in {args.out}/gpu_check.{{json,md}}; failed steps: {r['failed_steps'] or 'none'}")
    # a dry run may lack nvcc; anything else left undone means the check is incomplete
    bad = r["failed_steps"] or any(s["status"] == "skipped" and (not args.dry_run or s["detail"] == DEADLINE_SKIP)
                                   for s in run.steps.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
