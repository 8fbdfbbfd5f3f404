"""serving/: the Triton model repository, checked against a real tritonserver.

The server (nvidia-pytriton's tritonserver, Python backend only) and the tritonclient
client run from the serving environment .venv-serving (numpy<2, see README "Serving");
when it is missing it is built with scripts/setup_serving.sh (bounded time) and the
server tests skip, naming why, only if that fails. Everything listens on 127.0.0.1 on
free ports; every server and client process started here is stopped here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.layout import Bucket, load_manifest
from serving.pbtxt import ConfigError, parse_pbtxt, validate_config
from serving.repository import (RepositoryError, RepositoryOptions,
                                export_repository, model_names, onnx_config,
                                pipeline_config, tensorrt_config)

ROOT = Path(__file__).resolve().parents[1]
SETUP_TIMEOUT_S = 900
T, N, H, W = 2, 2, 56, 70


def bucket_name() -> str:
    return f"T{T}_N{N}_{H}x{W}"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Path:
    """The tiny-preset bucket, made by the real export command."""
    out = tmp_path_factory.mktemp("serving_export")
    r = subprocess.run([sys.executable, "cli.py", "export", "--preset", "tiny", "--T", str(T),
                        "--N", str(N), "--height", str(H), "--width", str(W), "--out",
                        str(out), "--no-validate"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out / f"T{T}_N{N}_{H}x{W}"


@pytest.fixture(scope="module")
def serving_python() -> Path:
    """.venv-serving's interpreter, built by scripts/setup_serving.sh when missing."""
    env = Path(os.environ.get("VGGT_MV_SERVING_ENV") or ROOT / ".venv-serving")
    if not (env / ".ready").is_file():
        try:
            r = subprocess.run(["bash", str(ROOT / "scripts" / "setup_serving.sh")],
                               cwd=ROOT, capture_output=True, text=True,
                               timeout=SETUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"scripts/setup_serving.sh did not finish in {SETUP_TIMEOUT_S} s")
        if r.returncode != 0:
            pytest.skip(f"cannot create the serving environment {env} (scripts/"
                        f"setup_serving.sh failed): {(r.stdout + r.stderr)[-800:]}")
    return env / "bin" / "python"


@pytest.fixture(scope="module")
def repo(bucket, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serving_repo") / "repo"
    export_repository([bucket], out, RepositoryOptions(max_batch_size=4,
                                                       max_queue_delay_us=20000,
                                                       instances=1, threads=1))
    return out


@pytest.fixture(scope="module")
def server(repo, serving_python):
    from serving.server import TritonServer, find_serving_env

    srv = TritonServer(repo, env=find_serving_env(serving_python.parents[1]))
    srv.start(timeout=180)
    yield srv
    srv.stop()
    assert srv.proc.poll() is not None


def _run_serving(serving_python: Path, *args: str, timeout: float = 300
                 ) -> subprocess.CompletedProcess:
    return subprocess.run([str(serving_python), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------- configs (no server)
def test_parser_rejects_what_triton_rejects():
    ok = 'name: "m"\nbackend: "python"\nmax_batch_size: 2\ninput { name: "x" ' \
         'data_type: TYPE_FP32 dims: [ 2, -1 ] }\n'
    assert validate_config(parse_pbtxt(ok))["input"][0]["dims"] == [2, -1]
    bad = {
        "unknown field": ok + "max_batch: 3\n",
        "bad enum": ok.replace("TYPE_FP32", "TYPE_F32"),
        "scalar set twice": ok + 'name: "n"\n',
        "list to a scalar": ok.replace("max_batch_size: 2", "max_batch_size: [ 2 ]"),
        "message to a scalar": ok + "platform { }\n",
        "unbalanced": ok + "dynamic_batching {\n",
        "zero dim": ok.replace("[ 2, -1 ]", "[ 0 ]"),
        "batching without batch": ok.replace("max_batch_size: 2", "max_batch_size: 0")
        + "dynamic_batching { }\n",
        "unknown nested field": ok + "instance_group { kind: KIND_CPU counts: 2 }\n",
        "wrong scalar kind": ok.replace("max_batch_size: 2", 'max_batch_size: "2"'),
    }
    for what, text in bad.items():
        with pytest.raises(ConfigError):
            validate_config(parse_pbtxt(text))
            pytest.fail(what)


def test_configs_come_from_the_manifest(bucket):
    """The TensorRT and onnxruntime configs (not loadable by the bundled server) parse
    under the schema, and their tensors are exactly the manifest's."""
    m = load_manifest(bucket)
    opts = RepositoryOptions(trt_instances=2)
    for text, platform in ((onnx_config(m), "onnxruntime_onnx"),
                           (tensorrt_config(m, opts), "tensorrt_plan")):
        cfg = validate_config(parse_pbtxt(text))
        assert cfg["platform"] == platform and cfg["max_batch_size"] == 0
        assert {t["name"]: t["dims"] for t in cfg["input"]} == \
            {k: v["shape"] for k, v in m["inputs"].items()}
        assert {t["name"]: t["dims"] for t in cfg["output"]} == \
            {k: v["shape"] for k, v in m["outputs"].items()}
        assert {t["data_type"] for t in cfg["output"]} == {"TYPE_FP32"}
    assert validate_config(parse_pbtxt(tensorrt_config(m, opts)))["instance_group"] == \
        [{"kind": "KIND_GPU", "count": 2}]
    p = validate_config(parse_pbtxt(pipeline_config(m, RepositoryOptions(
        max_batch_size=8, instances=3, max_queue_delay_us=500))))
    assert p["max_batch_size"] == 8 and p["instance_group"] == [{"kind": "KIND_CPU",
                                                                  "count": 3}]
    assert p["dynamic_batching"] == {"max_queue_delay_microseconds": 500}
    assert p["input"][0]["dims"] == [T, N, -1, -1, -1]
    outs = {t["name"]: t["dims"] for t in p["output"]}
    for k, v in m["outputs"].items():
        assert outs[k] == v["shape"][1:]      # the batch axis is Triton's
    assert outs["points"] == [T, N, H, W, 3] and outs["extrinsics"] == [T, N, 3, 4]


def test_repository_with_an_engine_wires_the_plugin(bucket, tmp_path):
    """A bucket holding an engine gets a tensorrt_plan model with model.plan and the
    plugin library beside it, and `serve` passes it as Triton's TensorRT backend
    config. (The bytes are placeholders: no TensorRT here to build or load them.)"""
    from serving.server import ServingEnv, TritonServer

    b = tmp_path / "buckets" / bucket.name
    shutil.copytree(bucket, b)
    (b / "model.fp16.engine").write_bytes(b"engine bytes")
    from conftest import stand_in_shared_library

    lib = stand_in_shared_library(tmp_path / "libvggt_mv_plugins.so")  # export checks ELF
    out = tmp_path / "repo"
    index = export_repository([b], out, RepositoryOptions(plugins=lib))
    names = model_names(Bucket.from_dict(load_manifest(b)["bucket"]))
    trt = out / names["trt"]
    assert (trt / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert (trt / "plugins" / lib.name).read_bytes() == lib.read_bytes()
    cfg = validate_config(parse_pbtxt((trt / "config.pbtxt").read_text()))
    assert cfg["platform"] == "tensorrt_plan" and cfg["default_model_filename"] == "model.plan"
    assert index["buckets"][0]["trt_plugins"] == f"{names['trt']}/plugins/{lib.name}"
    srv = TritonServer(out, env=ServingEnv(python=Path(sys.executable),
                                          tritonserver=Path("tritonserver")))
    cmd = srv.command(None)
    assert f"tensorrt,plugins={(trt / 'plugins' / lib.name).resolve()}" in cmd
    assert "PLUGIN" in (out / "README.md").read_text().upper()
    # The Python model on the engine (backend trt) carries engine and plugin itself.
    out2 = tmp_path / "repo_trt"
    export_repository([b], out2, RepositoryOptions(plugins=lib, backend="trt",
                                                   kind="KIND_GPU", include_onnx=False))
    version = out2 / names["pipeline"] / "1"
    assert (version / "bucket" / "model.fp16.engine").is_file()
    assert (version / "plugins" / lib.name).is_file()
    p = validate_config(parse_pbtxt((out2 / names["pipeline"] / "config.pbtxt").read_text()))
    params = dict(p["parameters"])
    assert params["backend"]["string_value"] == "trt"
    assert params["plugins"]["string_value"] == f"plugins/{lib.name}"
    assert p["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    with pytest.raises(RepositoryError, match="has no engine"):
        export_repository([bucket], tmp_path / "r3", RepositoryOptions(backend="trt"))


def test_export_triton_command(bucket, tmp_path):
    out = tmp_path / "repo"
    r = subprocess.run([sys.executable, "cli.py", "export-triton", "--bucket",
                        str(bucket.parent), "--out", str(out), "--instances", "2",
                        "--max-batch-size", "8", "--no-onnx-model"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped, no engine" in r.stdout and "cli.py serve --repo" in r.stdout
    name = f"vggt_mv_{bucket_name()}"
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", name, "serving.json"])
    cfg = validate_config(parse_pbtxt((out / name / "config.pbtxt").read_text()))
    assert cfg["max_batch_size"] == 8 and cfg["instance_group"][0]["count"] == 2
    version = out / name / "1"
    assert (version / "model.py").is_file() and (version / "runtime" / "layout.py").is_file()
    assert load_manifest(version / "bucket") == load_manifest(bucket)
    index = json.loads((out / "serving.json").read_text())
    assert index["buckets"][0]["pipeline"] == name and "onnx" not in index["buckets"][0]


def test_bad_input_leaves_nothing_half_written(bucket, tmp_path):
    out = tmp_path / "repo"
    export_repository([bucket], out, RepositoryOptions(include_onnx=False))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RepositoryError, match="not an exported bucket"):
        export_repository([bucket, tmp_path / "nope"], out)
    assert sorted(p.name for p in out.iterdir()) == before  # the old repository stays
    with pytest.raises(RepositoryError, match="--max-batch-size"):
        RepositoryOptions(max_batch_size=0).check()
    r = subprocess.run([sys.executable, "cli.py", "export-triton", "--bucket",
                        str(tmp_path / "nope"), "--out", str(tmp_path / "r2")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not an exported bucket" in r.stdout + r.stderr
    assert not (tmp_path / "r2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r2")]


def test_infer_server_without_a_server_fails_clearly(mv_scene, tmp_path):
    """From the main environment: either tritonclient is missing (this project keeps it
    in .venv-serving) or nothing listens; both are a clear error, exit 2, no files."""
    from serving.server import free_port

    r = subprocess.run([sys.executable, "cli.py", "infer", "--server",
                        f"http://127.0.0.1:{free_port()}", "--input", str(mv_scene), "--T",
                        str(T), "--N", str(N), "--out", str(tmp_path / "o"), "--timeout",
                        "5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "tritonclient is not installed" in text or "server unreachable" in text, text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra,says", [(["--pad"], "--pad is not available"),
                                         (["--stream"], "--stream is not available"),
                                         (["--onnx", "x"], "drop --engine / --onnx")])
def test_infer_server_refuses_local_only_options(mv_scene, tmp_path, extra, says):
    r = subprocess.run([sys.executable, "cli.py", "infer", "--server", "http://127.0.0.1:9",
                        "--input", str(mv_scene), "--out", str(tmp_path / "o"), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert says in r.stdout + r.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- against tritonserver
def _local_infer(bucket: Path, scene: Path, out: Path) -> None:
    r = subprocess.run([sys.executable, "cli.py", "infer", "--onnx", str(bucket), "--graph",
                        "model.onnx", "--input", str(scene), "--T", str(T), "--N", str(N),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _assert_same_outputs(local: Path, remote: Path, bucket: Path) -> None:
    from export.compare import PROFILES, compare_outputs

    a, b = np.load(local / "predictions.npz"), np.load(remote / "predictions.npz")
    assert sorted(a.files) == sorted(b.files)
    raw = list(load_manifest(bucket)["outputs"])
    rows = compare_outputs({k: a[k] for k in raw}, {k: b[k] for k in raw}, PROFILES["fp32"])
    assert all(r.passed for r in rows), [r.to_dict() for r in rows if not r.passed]
    prof = PROFILES["fp32"]
    for k in ("extrinsics", "intrinsics", "world_points_from_depth"):
        np.testing.assert_allclose(b[k], a[k], atol=prof.atol, rtol=prof.rtol,
                                   equal_nan=True, err_msg=k)
    for k in ("colors", "times", "views", "frame_paths"):
        assert np.array_equal(a[k], b[k]), k
    assert (a["conf_mask"] == b["conf_mask"]).mean() > 0.999
    files = {p.relative_to(local) for p in local.rglob("*") if p.is_file()}
    assert files == {p.relative_to(remote) for p in remote.rglob("*") if p.is_file()}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_infer_equals_local(server, serving_python, bucket, mv_scene, tmp_path,
                                   protocol):
    local, remote = tmp_path / "local", tmp_path / "remote"
    _local_infer(bucket, mv_scene, local)
    url = f"http://{server.http_url}" if protocol == "http" else f"grpc://{server.grpc_url}"
    r = _run_serving(serving_python, "cli.py", "infer", "--server", url, "--input",
                     str(mv_scene), "--T", str(T), "--N", str(N), "--out", str(remote))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"over {protocol}://" in r.stdout
    _assert_same_outputs(local, remote, bucket)
    info = json.loads((remote / "run.json").read_text())
    assert info["backend"] == "triton" and info["bucket"] == bucket.name


def test_remote_errors_are_clear(server, serving_python, mv_scene, tmp_path):
    # A clip shape with no model on the server names what is there.
    r = _run_serving(serving_python, "cli.py", "infer", "--server",
                     f"http://{server.http_url}", "--input", str(mv_scene), "--T", "3",
                     "--N", "2", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no ready vggt_mv model for T=3, N=2" in r.stdout + r.stderr
    assert not (tmp_path / "o" / "predictions.npz").exists()
    # Frames of the wrong layout: the model answers that request with an error.
    code = ("import numpy as np\nfrom serving.client import TritonClient, ServingClientError\n"
            f"c = TritonClient('http://{server.http_url}')\n"
            "try:\n"
            f"    c.infer_frames('vggt_mv_{bucket_name()}', np.zeros((1, {T}, {N}, 8, 8, 2),"
            " np.uint8), ['points'])\n"
            "except ServingClientError as e:\n    print('ERR', e)\n")
    r = _run_serving(serving_python, "-c", code)
    assert "ERR" in r.stdout and "frames must be uint8" in r.stdout, r.stdout + r.stderr


def test_load_is_batched_and_never_fails(server, serving_python, mv_scene):
    name = f"vggt_mv_{bucket_name()}"
    before = server.statistics(name)["model_stats"][0]
    r = _run_serving(serving_python, "-m", "serving.load", "--server",
                     f"http://{server.http_url}", "--input", str(mv_scene), "--T", str(T),
                     "--N", str(N), "--requests", "64", "--concurrency", "8", timeout=300)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and res["ok"] == 64 and res["failed"] == 0, res
    after = server.statistics(name)["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 64
    assert executions < inferences, "the dynamic batcher never grouped requests"
    assert any(int(b["batch_size"]) > 1 and int(b["compute_infer"]["count"]) > 0
               for b in after["batch_stats"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_stopped_mid_load(repo, serving_python, mv_scene, protocol):
    """Clients get an error that says the server went away, and nothing hangs."""
    from serving.server import TritonServer, find_serving_env

    srv = TritonServer(repo, env=find_serving_env(serving_python.parents[1]),
                       exit_timeout=2)
    srv.start(timeout=180)
    url = f"http://{srv.http_url}" if protocol == "http" else f"grpc://{srv.grpc_url}"
    load = subprocess.Popen([str(serving_python), "-m", "serving.load", "--server", url,
                             "--input", str(mv_scene), "--T", str(T), "--N", str(N),
                             "--requests", "2000", "--concurrency", "8", "--timeout", "15"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # Stop once the server has answered some requests (not after a fixed sleep,
        # so a faster machine cannot finish the load first).
        name, deadline = f"vggt_mv_{bucket_name()}", time.monotonic() + 120
        while int(srv.statistics(name)["model_stats"][0]["inference_count"]) < 8:
            assert time.monotonic() < deadline and load.poll() is None, "no load arrived"
            time.sleep(0.2)
        assert load.poll() is None, "the load finished before the server was stopped"
        t0 = time.monotonic()
        code = srv.stop()
        assert time.monotonic() - t0 < 30 and code is not None
        out, err = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
        srv.stop()
    res = json.loads(out.strip().splitlines()[-1])
    assert load.returncode == 1 and res["failed"] > 0 and res["ok"] > 0, res
    assert res["ok"] + res["failed"] == 2000
    assert all("server unreachable or stopped" in e or "failed:" in e
               for e in res["errors"]), res["errors"]
    assert any(url in e for e in res["errors"])
    # Nothing of the server is left: its process group is empty.
    with pytest.raises(ProcessLookupError):
        os.killpg(srv.proc.pid, 0)


def test_serve_command_starts_and_stops_on_signal(repo, serving_python):
    from serving.server import free_port

    ports = [str(free_port()) for _ in range(3)]
    env = {**os.environ, "VGGT_MV_SERVING_ENV": str(serving_python.parents[1])}
    proc = subprocess.Popen([sys.executable, "cli.py", "serve", "--repo", str(repo),
                             "--http-port", ports[0], "--grpc-port", ports[1],
                             "--metrics-port", ports[2]], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert any(f"http://127.0.0.1:{ports[0]}" in x for x in lines), "".join(lines)
        assert any("onnxruntime backend" in x for x in lines)  # the skipped model is named
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped (exit code 0)" in rest


def _servers_on(repo: Path) -> list[int]:
    """pids of tritonserver processes serving ``repo`` (from /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"tritonserver") and str(repo).encode() in cmd:
                pids.append(int(d.name))
    return pids


def test_serve_sigterm_while_starting_leaves_no_server(repo, serving_python, tmp_path):
    """SIGTERM before readiness: serve stops the half-started server (exit 130), or,
    if it was ready by then, stops it as usual (exit 0); never an orphan server."""
    repo = shutil.copytree(repo, tmp_path / "repo")  # own path: the shared server differs
    env = {**os.environ, "VGGT_MV_SERVING_ENV": str(serving_python.parents[1])}
    proc = subprocess.Popen([sys.executable, "cli.py", "serve", "--repo", str(repo),
                             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("starting tritonserver"), first
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), first + rest
    if proc.returncode == 130:
        assert "interrupted before the server was ready" in rest
    assert _servers_on(repo.resolve()) == []
