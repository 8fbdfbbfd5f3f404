"""`check` and `bench` commands (registered in cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

# Logs redirected to files should not squeeze tables to 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def check(
    bucket: Path = typer.Option(..., help="exported bucket folder"),
    inputs: str = typer.Option("random", help="'random' (seeded) or a folder of real frames like ../shared/data/mv_scene"),
    out: Optional[Path] = typer.Option(None, help="report folder (default: <bucket>/check)"),
    profiles: Optional[Path] = typer.Option(None, help="JSON overriding tolerance profiles, e.g. {\"fp16\": {\"atol\": 0.1}}"),
    backend: list[str] = typer.Option([], help="limit to these backends (e.g. onnxrt:model.plugins.onnx); PyTorch always runs"),
    seed: int = typer.Option(0, help="seed for random inputs"),
) -> None:
    """Compare every available backend of a bucket against PyTorch with Polygraphy:
    tensor errors, camera rotation/translation, depth AbsRel / delta<1.25, point error;
    writes Polygraphy JSON, summary.json and report.md with depth and error pictures.
    Exit 1 when a backend fails its precision profile."""
    from export.accuracy.check import run_check
    from export.buckets import Bucket
    from export.exporter import load_manifest
    from export.pipeline import validation_feeds

    try:
        m = load_manifest(bucket)
        feeds, desc = validation_feeds(Bucket.from_dict(m["bucket"]), inputs, seed)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)
    out = out or bucket / "check"
    summary = run_check(bucket, [feeds], out, profiles, backend or None, log=console.print)
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
    console.print(f"report: {out / 'report.md'}")
    if not summary["passed"]:
        raise typer.Exit(1)


def bench(
    bucket: Path = typer.Option(..., help="exported bucket folder"),
    repeats: int = typer.Option(3, help="timed runs per backend"),
    warmup: int = typer.Option(1, help="untimed runs first"),
    backend: list[str] = typer.Option([], help="backends to time (default: all available)"),
    out: Optional[Path] = typer.Option(None, help="JSON to write (default: <bucket>/bench.json)"),
) -> None:
    """Latency (median, p90), throughput and peak memory per backend, each backend in its
    own process; GPU backends are listed as skipped without a GPU."""
    from export.accuracy.bench import run_bench
    from export.accuracy.runners import available_backends
    from export.artifacts import write_json_atomic

    found = available_backends(bucket)
    names = [b for b, r in found if r is None and (not backend or b in backend)]
    skipped = {b: r for b, r in found if r is not None}
    res = run_bench(bucket, names, repeats, warmup, skipped)
    path = write_json_atomic(out or bucket / "bench.json", res)
    table = Table(title=f"bench {bucket.name}: {repeats} runs after {warmup} warm-up")
    for col in ("backend", "median s", "p90 s", "frames/s", "peak MB"):
        table.add_column(col)
    for r in res["rows"]:
        if "error" in r:
            table.add_row(r["backend"], "error", r["error"][:60], "", "")
        else:
            table.add_row(r["backend"], f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}",
                          f"{r['frames_per_s']:.2f}", f"{r['peak_rss_mb']:.0f}")
    for b, reason in skipped.items():
        table.add_row(b, "skipped", reason, "", "")
    console.print(table)
    console.print(f"wrote {path}")
