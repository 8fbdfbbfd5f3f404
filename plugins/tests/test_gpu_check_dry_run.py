"""scripts/gpu_check.sh without a GPU: the dry run executes every step against the host
(CPU shim) build of the same C entry point, so the ctypes call, every case, the site
comparison with SDPA, the timing loop, the sanitizer child and the report writers run for
real; a C signature the caller does not match, a step that fails and a deadline that runs
out all end in a written report naming the step. The GPU run itself has not run here."""
import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
ALL_STEPS = ["probe", "nvcc_build", "build", "cases", "sites", "timing",
             "memcheck", "racecheck", "initcheck", "synccheck"]


def gpu_check(*args, timeout=3700):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def changed_signature(tmp_path) -> Path:
    """attention_capi.cu with one more parameter, as a C-side change would add it."""
    from plugins.capi import CAPI_SOURCE

    text = CAPI_SOURCE.read_text()
    assert "int level_mask," in text
    src = tmp_path / "attention_capi.cu"
    src.write_text(text.replace("int level_mask,", "int level_mask, int window,", 1))
    return src


@pytest.fixture(scope="module")
def host_lib():
    from plugins import capi_build

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) for the host build of the entry point")
    return capi_build.build("host", cxx)[0]


@pytest.mark.slow
def test_dry_run_executes_every_step(tmp_path):
    from plugins.kernel_cases import gpu_cases, real_sites

    res = gpu_check("--dry-run", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["dry_run"] is True and r["failed_steps"] == []
    assert list(r["steps"]) == ALL_STEPS
    for name, step in r["steps"].items():
        want = {"ok", "skipped"} if name == "nvcc_build" and shutil.which("nvcc") is None else {"ok"}
        assert step["status"] in want, (name, step)
    assert r["cases"]["passed"] == r["cases"]["total"] == len(gpu_cases()) == 91
    sites = r["sites"]["rows"]
    assert [(s["site"], s["bias"]) for s in sites] == [(s.name, b) for s in real_sites() for b in (False, True)]
    assert all(s["ok"] and s["rows"] == s["shape"][0] * s["shape"][1] * s["shape"][2] for s in sites)
    assert {s["shape"][3] for s in sites} == {64, 128}
    assert len(r["timing"]["rows"]) == 4 * len(real_sites()) and all(t["ms"] > 0 for t in r["timing"]["rows"])
    if shutil.which("nvcc"):
        cmd = r["nvcc_build"]["command"]
        assert "--use_fast_math" in cmd and "-lineinfo" in cmd and "-arch=sm_80" in cmd
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# Attention kernels on none (dry run)") and "No step failed." in md
    assert "| Time-SA | [1, 2, 200, 64] | True |" in md


def test_signature_is_read_from_the_c_source():
    from plugins.capi import CAPI_SOURCE, parse_signature

    params = parse_signature(CAPI_SOURCE.read_text())
    pointers = [n for n, t in params if t is ctypes.c_void_p]
    assert pointers == ["q", "k", "v", "r", "c", "landmarks", "out", "stream"]
    assert dict(params)["scale"] is ctypes.c_float and params[-1] == ("path", ctypes.c_int)
    assert len(params) == 25


def test_unmapped_parameter_type_is_named():
    from plugins.capi import SignatureError, parse_signature

    with pytest.raises(SignatureError, match="'double scale'"):
        parse_signature('extern "C" int vggt_attention_launch(int kind, double scale, void* out)')
    with pytest.raises(SignatureError, match="no `extern"):
        parse_signature("int other(int a)")


def test_call_that_does_not_match_the_c_signature_fails(tmp_path, host_lib):
    """The caller passes what the shipped source declares; against a source with one more
    parameter the call stops before reaching the library, naming the parameter."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check_steps as steps
    from plugins.capi import Launcher, SignatureError
    from plugins.kernel_cases import SANITIZE_CASES

    env = steps.Env(dry_run=True)
    kind, case, path = SANITIZE_CASES[0]
    assert steps.run_case(Launcher(host_lib), env, kind, case, path) < steps.FP16_TOL
    with pytest.raises(SignatureError, match=r"missing \['window'\]"):
        steps.run_case(Launcher(host_lib, changed_signature(tmp_path)), env, kind, case, path)


@pytest.mark.slow
def test_wrong_signature_fails_the_dry_run_and_the_report_names_the_steps(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--skip-nvcc-build",
                          "--capi-source", str(changed_signature(tmp_path))],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    launching = ["cases", "sites", "timing", "memcheck", "racecheck", "initcheck", "synccheck"]
    assert r["failed_steps"] == launching
    assert r["steps"]["probe"]["status"] == r["steps"]["build"]["status"] == "ok"
    assert all("window" in r["steps"][s]["detail"] for s in launching), r["steps"]
    assert "**Failed steps: cases, sites, timing, memcheck" in (out / "gpu_check.md").read_text()
    assert "SignatureError" in (out / "logs" / "cases.log").read_text()


def test_deadline_skips_what_it_cannot_start_and_still_writes_the_report(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--deadline", "5.5"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-3000:]
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(r["steps"]) == ALL_STEPS
    assert all(s["status"] == "skipped" for s in r["steps"].values()), r["steps"]
    assert all("deadline" in r["steps"][s]["detail"] for s in ("probe", "nvcc_build", "build")), r["steps"]
    assert "| sites | skipped |" in (tmp_path / "gpu_check.md").read_text()


def test_step_timeout_is_a_failure_with_its_progress(tmp_path, monkeypatch):
    """A step past its budget is killed; the report says so and keeps what it finished."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check

    monkeypatch.setitem(gpu_check.BUDGETS, "cases", 10)
    for later in ("sites", "timing"):   # budget 0: left out, to keep the test short
        monkeypatch.setitem(gpu_check.BUDGETS, later, 0)
    monkeypatch.setattr(gpu_check, "SANITIZER_TOOLS", ())
    rc = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--skip-nvcc-build", "--budget-scale", "1"])
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1 and r["failed_steps"] == ["cases"], r["steps"]
    assert "timed out after 10 s budget" in r["steps"]["cases"]["detail"]
    assert r["cases"]["partial"] and all(c["ok"] for c in r["cases"]["partial"])
    assert "Kernel cases: interrupted after" in (tmp_path / "gpu_check.md").read_text()


def test_shipped_nvcc_flags_come_from_cmake(tmp_path):
    from plugins import capi_build

    flags = capi_build.shipped_nvcc_flags()
    assert flags[0] == "-std=c++17" and "--use_fast_math" in flags and "-O3" in flags and "-DNDEBUG" in flags
    cmd = capi_build.nvcc_command("nvcc", "90", tmp_path / "x.so")
    assert "-lineinfo" in cmd and "-arch=sm_90" in cmd
    bad = tmp_path / "CMakeLists.txt"
    bad.write_text("project(x)\n")
    with pytest.raises(RuntimeError, match="CUDA compile options"):
        capi_build.shipped_nvcc_flags(bad)


def test_compute_sanitizer_lookup_order(tmp_path, monkeypatch):
    from plugins import capi_build

    def tool(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    nvcc = tool(tmp_path / "cuda" / "bin" / "nvcc")
    home, on_path = tmp_path / "home", tmp_path / "path"
    monkeypatch.setenv("CUDA_HOME", str(home))
    monkeypatch.setenv("PATH", str(on_path))
    with pytest.raises(capi_build.ToolMissing, match="compute-sanitizer not found"):
        capi_build.find_sanitizer(str(nvcc))
    tool(on_path / "compute-sanitizer")
    assert capi_build.find_sanitizer(str(nvcc)) == str(on_path / "compute-sanitizer")
    tool(home / "compute-sanitizer" / "compute-sanitizer")
    assert capi_build.find_sanitizer(str(nvcc)) == str(home / "compute-sanitizer" / "compute-sanitizer")
    tool(home / "bin" / "compute-sanitizer")
    assert capi_build.find_sanitizer(str(nvcc)) == str(home / "bin" / "compute-sanitizer")
    tool(tmp_path / "cuda" / "bin" / "compute-sanitizer")
    assert capi_build.find_sanitizer(str(nvcc)) == str(tmp_path / "cuda" / "bin" / "compute-sanitizer")


def test_cases_and_sites_import_without_pytest():
    code = ("import sys; sys.modules['pytest'] = None; sys.path.insert(0, 'scripts'); "
            "import gpu_check, gpu_check_steps; from plugins.kernel_cases import gpu_cases, real_sites; "
            "print(len(gpu_cases()), [(s.batch, s.heads, s.length, s.head_dim) for s in real_sites()])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "91 [(4, 16, 10992, 64), (8, 16, 5496, 64), (32, 16, 1374, 64), (1, 16, 32, 128)]"


def test_gpu_check_rejects_unknown_arguments():
    res = gpu_check("--bogus", timeout=30)
    assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr
