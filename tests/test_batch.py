"""`batch` (Ray Data actors) and `infer --stream --workers` (Ray Core actors) on a local
Ray instance: CPU, tiny preset, two actors, real frames (clips are t0 windows of mv_scene
written as separate clip folders)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.batch.items import BATCH_JSON, DONE_MARKER, discover_items, percentile
from runtime.errors import RuntimeDataError

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
CLIP_T, CLIP_N, CLIPS = 4, 2, 8


@pytest.fixture(scope="session")
def ray_local():
    from runtime.batch.pool import start_ray, stop_ray

    start_ray(num_cpus=2, object_store_mb=300)
    yield
    stop_ray()


@pytest.fixture(scope="session")
def bucket(tmp_path_factory):
    import torch

    from export.buckets import Bucket
    from export.exporter import export_bucket
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("batch_bucket")
    export_bucket(VGGTMV(tiny_config()).eval(), Bucket(CLIP_T, CLIP_N, 42, 56), root,
                  log=lambda s: None)
    return root


@pytest.fixture(scope="session")
def clips(mv_scene, tmp_path_factory):
    """clip0..clip7: time steps k..k+3 of views 0, 1, each its own time_TT/viewV folder."""
    root = tmp_path_factory.mktemp("clips")
    for k in range(CLIPS):
        for i in range(CLIP_T):
            d = root / f"clip{k}" / f"time_{i:02d}"
            d.mkdir(parents=True)
            for v in range(CLIP_N):
                shutil.copy(mv_scene / "images" / f"time_{k + i:02d}" / f"view{v}.png", d)
    return root


@pytest.fixture(scope="session")
def spec(ray_local, bucket):
    """Two Ray Data actors of half a CPU each."""
    from runtime.batch.data import ActorSpec

    return ActorSpec(str(bucket), "onnx", {"graph": "model.onnx", "threads": 1}, workers=2,
                     cpus=0.5)


@pytest.fixture(scope="session")
def pool(ray_local, bucket):
    """The stream's two Ray Core actors of half a CPU each."""
    from runtime.batch.pool import ActorPool

    p = ActorPool(bucket, "onnx", {"graph": "model.onnx", "threads": 1}, workers=2, cpus=0.5)
    yield p
    p.close()


@pytest.fixture(scope="session")
def serial(bucket, clips, tmp_path_factory):
    """What `infer` writes for each clip (its Predictor and writer, default threads)."""
    from runtime.predictor import Predictor

    out = tmp_path_factory.mktemp("serial")
    with Predictor(bucket, backend="onnx", graph="model.onnx") as p:
        for k in range(CLIPS):
            p.predict(clips / f"clip{k}").write_outputs(out / f"clip{k}")
    return out


def _same_outputs(a: Path, b: Path) -> None:
    za, zb = np.load(a / "predictions.npz"), np.load(b / "predictions.npz")
    assert sorted(za.files) == sorted(zb.files)
    for k in za.files:
        assert np.array_equal(za[k], zb[k], equal_nan=za[k].dtype.kind == "f"), k
    assert (a / "points.ply").read_bytes() == (b / "points.ply").read_bytes()
    for sub in ("depth", "confidence"):
        names = sorted(p.name for p in (a / sub).iterdir())
        assert names == sorted(p.name for p in (b / sub).iterdir()) and names
        for n in names:
            assert (a / sub / n).read_bytes() == (b / sub / n).read_bytes(), n


def _leftovers(out: Path) -> list:
    return [p.name for p in out.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_eight_clips_equal_serial_infer_and_a_second_run_skips_them(spec, clips, serial,
                                                                     tmp_path):
    from runtime.batch.run import run_batch

    items = discover_items(clips)
    assert [i.name for i in items] == [f"clip{k}" for k in range(CLIPS)]
    res, s = run_batch(items, tmp_path, spec, {})
    assert [r.status for r in res] == ["done"] * CLIPS, [r.message for r in res]
    assert s["done"] == CLIPS and s["clips_per_s"] > 0 and s["latency_p90_s"] > 0
    # one session per actor, not one per clip
    assert s["session_loads"] == 2 and s["workers_started"] == 2
    assert {w["code"] for w in s["workers_info"]} == {str(ROOT)}  # this checkout's runtime/
    for k in range(CLIPS):
        _same_outputs(tmp_path / f"clip{k}", serial / f"clip{k}")
        assert json.loads((tmp_path / f"clip{k}" / DONE_MARKER).read_text())["item"] == f"clip{k}"
    record = json.loads((tmp_path / BATCH_JSON).read_text())
    assert [i["status"] for i in record["items"]] == ["done"] * CLIPS
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    res, s = run_batch(items, tmp_path, spec, {})
    assert [r.status for r in res] == ["skipped"] * CLIPS and s["done"] == 0
    assert s["workers_started"] == 0  # nothing to do: no actor, no session
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p.name != BATCH_JSON} == \
        {p: t for p, t in before.items() if p.name != BATCH_JSON}


@ray.remote(num_cpus=0)
class Killer:
    """Kills, through Ray's API, the first actor that asks while running its item."""

    def __init__(self):
        self.killed = []

    def kill(self, actor, item):
        if not self.killed:
            self.killed.append(item)
            ray.kill(actor, no_restart=False)  # Ray restarts it; Ray Data retries the task

    def victims(self):
        return self.killed


def _killing_mapper():
    from runtime.batch.data import ItemMapper

    class KillingMapper(ItemMapper):
        def run_item(self, name, input, attempt):
            if name == "clip3":  # after the attempt was counted, before anything is written
                killer = ray.get_actor("batch-test-killer")
                ray.get(killer.kill.remote(ray.get_runtime_context().current_actor, name))
            return super().run_item(name, input, attempt)

    return KillingMapper


def test_an_actor_killed_mid_run_has_its_item_retried(spec, clips, serial, tmp_path):
    from runtime.batch.run import run_batch

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors lack tests/
    killer = Killer.options(name="batch-test-killer").remote()
    try:
        res, s = run_batch(discover_items(clips), tmp_path, spec, {},
                           mapper=_killing_mapper())
        assert ray.get(killer.victims.remote()) == ["clip3"]
    finally:
        ray.kill(killer)
    assert [r.status for r in res] == ["done"] * CLIPS, [r.message for r in res]
    assert [r.name for r in res if r.attempts > 1] == ["clip3"]
    assert [r.attempts for r in res if r.name == "clip3"] == [2]
    assert s["retried"] == 1 and s["workers_started"] == 3  # the restart loaded again
    assert all(r.written for r in res)  # killed before writing: each written once
    for k in range(CLIPS):
        _same_outputs(tmp_path / f"clip{k}", serial / f"clip{k}")
    assert _leftovers(tmp_path) == []


def test_an_interrupted_run_records_pending_items_and_the_next_run_resumes(
        spec, clips, tmp_path):
    import dataclasses

    from runtime.batch.run import run_batch

    items, seen = discover_items(clips), []

    def ctrl_c(res):
        seen.append(res.name)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the run stops its actors on the way out
        run_batch(items, tmp_path, dataclasses.replace(spec, workers=1), {}, on_result=ctrl_c)
    record = json.loads((tmp_path / BATCH_JSON).read_text())
    status = {i["name"]: i["status"] for i in record["items"]}
    assert sorted(n for n, st in status.items() if st == "done") == sorted(seen)
    assert list(status.values()).count("pending") == CLIPS - 3
    assert record["summary"]["pending"] == CLIPS - 3
    res, s = run_batch(items, tmp_path, spec, {})
    assert s["failed"] == 0 and s["done"] + s["skipped"] == CLIPS
    assert {r.name for r in res if r.status == "skipped"} >= set(seen)
    assert _leftovers(tmp_path) == []


def test_a_corrupt_clip_is_reported_and_the_rest_finish(ray_local, bucket, clips, tmp_path):
    from typer.testing import CliRunner

    import cli as command_line

    root = tmp_path / "in"
    for k in (0, 1, 2):
        shutil.copytree(clips / f"clip{k}", root / f"clip{k}")
    shutil.copytree(clips / "clip3", root / "corrupt")
    (root / "corrupt" / "time_02" / "view1.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    shutil.copytree(clips / "clip4", root / "one_view")
    for d in (root / "one_view").iterdir():
        (d / "view1.png").unlink()
    out = tmp_path / "out"
    r = CliRunner().invoke(command_line.app, [
        "batch", "--onnx", str(bucket), "--graph", "model.onnx", "--input", str(root), "--out",
        str(out), "--workers", "2", "--cpus-per-worker", "0.5"])
    assert r.exit_code == 1, r.output  # a failed item: the step failed, the rest are done
    items = {i["name"]: i for i in json.loads((out / BATCH_JSON).read_text())["items"]}
    assert {n: i["status"] for n, i in items.items()} == {
        "clip0": "done", "clip1": "done", "clip2": "done", "corrupt": "failed",
        "one_view": "failed"}
    assert "view1.png" in items["corrupt"]["message"]
    assert "no exported bucket" in items["one_view"]["message"]
    assert "N=1" in items["one_view"]["message"]
    assert not (out / "corrupt").exists() and not (out / "one_view").exists()
    assert "corrupt" in r.output and "clips/s" in r.output


def test_the_parallel_stream_equals_the_serial_stream(pool, bucket, mv_scene, tmp_path):
    from runtime.batch.run import ParallelWindows
    from runtime.predictor import Predictor
    from runtime.streaming import StreamingPredictor

    outs = {}
    for name in ("serial", "parallel"):
        with Predictor(bucket, backend="onnx", graph="model.onnx") as p:
            runner = ParallelWindows(p, pool) if name == "parallel" else p
            s = StreamingPredictor(runner, CLIP_T, 1, tmp_path / name, N=CLIP_N,
                                   log=lambda m: None, warn=lambda m: None)
            s.run_folder(mv_scene)
            outs[name] = s.close()
            if name == "parallel":
                assert runner._n == 5  # every window went to an actor
    assert outs["parallel"]["windows"] == outs["serial"]["windows"] == 5
    a, b = tmp_path / "serial", tmp_path / "parallel"
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for n in names:
        if n in ("run.json", "windows.json"):
            continue  # seconds differ
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    wa, wb = (json.loads((d / "windows.json").read_text()) for d in (a, b))
    strip = lambda ws: [{k: v for k, v in w.items() if k != "seconds"} for w in ws]  # noqa
    assert strip(wa) == strip(wb)


# ------------------------------------------------------------------ no Ray needed
def test_items_from_a_list_file_and_bad_inputs(clips, tmp_path):
    lst = tmp_path / "clips.txt"
    lst.write_text(f"# two clips\n{clips / 'clip1'}\n\n{clips / 'clip0'}\n")
    assert [i.name for i in discover_items(lst)] == ["clip1", "clip0"]
    with pytest.raises(RuntimeDataError, match="one clip, not a batch"):
        discover_items(clips / "clip0")
    with pytest.raises(RuntimeDataError, match="not found"):
        discover_items(tmp_path / "nope")
    lst.write_text(f"{clips / 'clip1'}\n{clips / 'clip1'}\n")
    with pytest.raises(RuntimeDataError, match="would both write"):
        discover_items(lst)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 90) is None


def test_an_item_whose_actor_keeps_dying_is_given_up(bucket, clips, tmp_path):
    """The mapper is a plain class: its attempt counting runs here, without Ray."""
    from runtime.batch.data import RUN_DIR, ActorSpec, ItemMapper, _count_attempt

    m = ItemMapper(ActorSpec(str(bucket), "onnx", {"graph": "model.onnx"}), str(tmp_path),
                   {}, max_attempts=2)
    cols = m({"name": np.array(["clip0"]), "input": np.array([str(clips / "clip0")])})
    assert cols["status"] == ["done"] and cols["attempts"] == [1] and cols["written"] == [True]
    for _ in range(2):  # two tries of clip1 whose actor died before they returned
        _count_attempt(tmp_path / RUN_DIR, "clip1")
    r = m.run_one("clip1", str(clips / "clip1"))
    assert r.status == "failed" and r.attempts == 2 and "died 2 time(s)" in r.message
    assert not (tmp_path / "clip1").exists()
    (rec,) = [json.loads(f.read_text()) for f in (tmp_path / RUN_DIR / "actors").iterdir()]
    assert rec["session_loads"] == 1 and rec["items"] == 1


def test_runtime_and_cli_import_without_ray(tmp_path):
    code = ("import sys\n"
            "class B:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'ray': raise ImportError('ray blocked')\n"
            "sys.meta_path.insert(0, B())\n"
            "import runtime.batch.items, runtime.batch.worker, runtime.batch.pool\n"
            "import runtime.batch.data\n"
            "import runtime.batch.run, runtime.batch.command, cli\n"
            "from runtime.batch.pool import import_ray, RayUnavailableError\n"
            "try:\n    import_ray()\nexcept RayUnavailableError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pip install -e '.[batch]'" in r.stdout


def test_workers_without_stream_is_refused(tmp_path):
    from typer.testing import CliRunner

    import cli as command_line

    r = CliRunner().invoke(command_line.app, ["infer", "--onnx", str(tmp_path), "--input",
                                              str(tmp_path), "--workers", "2"])
    assert r.exit_code == 2 and "--stream" in r.output
