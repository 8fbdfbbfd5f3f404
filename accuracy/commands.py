"""`check` and `bench` commands (registered in cli.py); heavy imports inside."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from runtime.console import console, fail, warn


def check(
    bucket: Path = typer.Option(..., help="exported bucket folder"),
    input: str = typer.Option("random", "--input", "-i", help="'random' (seeded) or a folder "
                              "of real frames like ../shared/data/mv_scene"),
    inputs_alias: Optional[str] = typer.Option(None, "--inputs", hidden=True,
                                               help="old spelling of --input"),
    out: Optional[Path] = typer.Option(None, help="report folder (default: <bucket>/check)"),
    profiles: Optional[Path] = typer.Option(None, help="JSON overriding tolerance profiles, e.g. {\"fp16\": {\"atol\": 0.1}}"),
    backend: list[str] = typer.Option([], help="limit to these backends (e.g. onnxrt:model.plugins.onnx); PyTorch always runs"),
    seed: int = typer.Option(0, help="seed for random inputs"),
) -> None:
    """Compare every available backend of a bucket against PyTorch with Polygraphy, each
    through the runtime session `infer` uses: tensor errors, camera rotation/translation,
    depth AbsRel / delta<1.25, point error; writes Polygraphy JSON, summary.json and
    report.md with depth and error pictures. Exit 1 when a backend fails its profile."""
    from accuracy.check import run_check
    from accuracy.runners import available_backends, unknown_backends, \
        verify_recorded_checkpoints
    from export.compare import load_profiles
    from export.pipeline import validation_feeds
    from runtime.layout import CHECK_DIR, Bucket, load_manifest

    frames = inputs_alias or input
    try:
        m = load_manifest(bucket)
        verify_recorded_checkpoints(m)  # before any graph is blamed for a changed checkpoint
        load_profiles(profiles)  # a bad --profiles file fails here, before any backend runs
        feeds, desc = validation_feeds(Bucket.from_dict(m["bucket"]), frames, seed)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        fail(str(e))
    found = available_backends(bucket)
    refusal = unknown_backends(found, backend)
    if refusal:
        fail(refusal)
    # a backend asked for by name that cannot run would leave PyTorch compared with nothing
    cannot = {b: r for b, r in found if b in backend and r is not None}
    if cannot:
        fail("requested backend(s) cannot run: " + "; ".join(f"{b}: {r}" for b, r in
                                                             cannot.items()), code=1)
    out = out or bucket / CHECK_DIR
    summary = run_check(bucket, [feeds], out, profiles, backend or None,
                        log=lambda s: console.print(s, markup=False))
    table = Table(title=f"check {summary['bucket']} ({desc})")
    for col in ("backend", "profile", "max rot deg", "depth AbsRel", "delta<1.25", "result"):
        table.add_column(col)
    for name, v in summary["backends"].items():
        t = v["task"]
        table.add_row(name, v["profile"], f"{t.get('rotation_deg_max', float('nan')):.3g}",
                      f"{t.get('depth_absrel', float('nan')):.3g}",
                      f"{t.get('depth_delta125', float('nan')):.4f}",
                      "PASS" if v["passed"] else "FAIL: " + "; ".join(v["failures"][:2]))
    for name, reason in summary["skipped"].items():
        table.add_row(name, "-", "-", "-", "-", f"skipped: {reason}")
    console.print(table)
    console.print(f"report: {out / 'report.md'}", markup=False)
    if not summary["passed"]:
        raise typer.Exit(1)


BENCH_COLUMNS = ("backend", "median s", "p90 s", "frames/s", "peak MB", "note")


def bench_rows(res: dict, skipped: dict[str, str]) -> tuple[list[tuple[str, ...]], list[str]]:
    """Table rows (numbers in their columns only; errors and skip reasons in the note) and
    warnings for noisy timings (p90 / median > NOISY_RATIO)."""
    from accuracy.bench import NOISY_RATIO

    rows, warnings = [], []
    for r in res["rows"]:
        if "error" in r:
            rows.append((r["backend"], "", "", "", "", f"error: {r['error'][:60]}"))
            continue
        ratio = r["p90_s"] / r["median_s"] if r["median_s"] > 0 else float("inf")
        note = ""
        if ratio > NOISY_RATIO:
            note = f"noisy: p90 {ratio:.1f}x median"
            warnings.append(f"{r['backend']}: p90 {r['p90_s']:.3f} s is {ratio:.1f}x the "
                            f"median {r['median_s']:.3f} s: the timings are noisy (other "
                            f"load on this machine?); rerun with more --repeats")
        rows.append((r["backend"], f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}",
                     f"{r['frames_per_s']:.2f}", f"{r['peak_rss_mb']:.0f}", note))
    for b, reason in skipped.items():
        rows.append((b, "", "", "", "", f"skipped: {reason}"))
    return rows, warnings


def bench(
    bucket: Path = typer.Option(..., help="exported bucket folder"),
    repeats: int = typer.Option(3, min=1, help="timed runs per backend"),
    warmup: int = typer.Option(1, min=0, help="untimed runs first"),
    backend: list[str] = typer.Option([], help="backends to time, e.g. pytorch, "
                                      "onnxrt:model.onnx (default: all available)"),
    out: Optional[Path] = typer.Option(None, help="JSON to write (default: <bucket>/bench.json)"),
) -> None:
    """Latency (median, p90), throughput and peak memory per backend, each backend in its
    own process, through the same runners as `check`; GPU backends are listed as skipped
    without a GPU. Exit 1 when a backend fails to run."""
    from accuracy.bench import run_bench
    from accuracy.runners import available_backends, unknown_backends
    from runtime.errors import RuntimeDataError
    from runtime.layout import BENCH, atomic_write_json, is_bucket, output_file

    if not is_bucket(bucket):
        fail(f"{bucket} is not an exported bucket (no manifest.json); run `python cli.py "
             f"export` first")
    try:  # before minutes of timing, not after
        if out is not None:
            output_file(out, BENCH)
    except RuntimeDataError as e:
        fail(str(e))
    found = available_backends(bucket)
    refusal = unknown_backends(found, backend)
    if refusal:
        fail(refusal)
    names = [b for b, r in found if r is None and (not backend or b in backend)]
    skipped = {b: r for b, r in found if r is not None and (not backend or b in backend)}
    res = run_bench(bucket, names, repeats, warmup, skipped)
    path = atomic_write_json(out or bucket / BENCH, res)
    table = Table(title=f"bench {bucket.name}: {repeats} runs after {warmup} warm-up")
    for col in BENCH_COLUMNS:
        table.add_column(col)
    rows, warnings = bench_rows(res, skipped)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for w in warnings:
        warn(w)
    console.print(f"wrote {path}", markup=False)
    if any("error" in r for r in res["rows"]):
        raise typer.Exit(1)
