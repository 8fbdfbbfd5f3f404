"""vggt-mv-deploy command line: argument parsing and calls, nothing else.

Every command is a thin shell over a function in export/, vggt_mv/, runtime/, calib/,
accuracy/ or serving/; heavy imports happen inside the commands so `--help` is instant.
Conventions:
--input is the frames folder, -o is a model config override, --repeats / --warmup time
things, errors go through runtime.console.fail (exit 2: bad input, 1: a step failed).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from runtime.console import console, flag, setup_logging, warn
from runtime.console import fail as _fail

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Export VGGT_MV to ONNX / TensorRT, validate it, and run it.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("vggt-mv-deploy")
        except PackageNotFoundError:  # run from a checkout without `pip install -e .`
            import vggt_mv

            v = vggt_mv.__version__
        console.print(f"vggt-mv-deploy {v}", markup=False)
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = flag(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="more log output (-v info, -vv debug, TensorRT's too)"),
    log_file: Optional[Path] = typer.Option(None, "--log-file",
                                            help="also write the full log (debug level, "
                                            "TensorRT's messages included) to this file"),
) -> None:
    setup_logging(verbose, log_file)


def _overrides(options: list[str]) -> dict:
    """-o key=value (JSON values, else strings): the one parser of config overrides."""
    changes = {}
    for opt in options:
        key, sep, val = opt.partition("=")
        if not sep or not key:
            _fail(f"-o expects key=value, got {opt!r}")
        try:
            changes[key] = json.loads(val)
        except json.JSONDecodeError:
            changes[key] = val
    return changes


def _config(preset: str, options: list[str]):
    from vggt_mv.config import get_config

    try:
        cfg = get_config(preset, **_overrides(options))
        cfg.validate()  # a bad -o value is bad input: said before any resource check
        return cfg
    except (ValueError, TypeError, KeyError) as e:
        _fail(str(e))


def _meta_parameters(cfg) -> int:
    """Parameter count without allocating weights."""
    import torch

    from vggt_mv.models import VGGTMV

    with torch.device("meta"):
        return VGGTMV(cfg).num_parameters()


def _build_model(preset: str, options: list[str], checkpoint: Optional[Path],
                 pi3: Optional[Path], seed_checkpoint: Optional[Path], seed: int,
                 strict: bool, allow_partial_load: bool = False):
    import torch

    from vggt_mv.models import VGGTMV

    cfg = _config(preset, options)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = VGGTMV(cfg).eval()
    console.print(f"built {cfg.name} ({model.num_parameters() / 1e6:,.1f} M parameters) in "
                  f"{time.perf_counter() - t0:.1f} s")
    if checkpoint or pi3 or seed_checkpoint:
        from vggt_mv.weights import CheckpointError, LoadError, load_weights

        try:
            report = load_weights(model, checkpoint=checkpoint, pi3=pi3,
                                  seed_checkpoint=seed_checkpoint, strict=strict)
        except (CheckpointError, LoadError, FileNotFoundError) as e:
            _fail(str(e))
        console.print(report.as_table(), markup=False, soft_wrap=True)
        gaps = report.gaps()
        if gaps and not allow_partial_load:
            _fail(f"the checkpoint does not fit configuration {cfg.name}: {'; '.join(gaps)}. "
                  f"Load report: {report.summary()}. Check --preset and -o options against "
                  f"the checkpoint, or pass --allow-partial-load to export anyway")
        if gaps:
            warn("partial load (--allow-partial-load): " + "; ".join(gaps))
        weights = report.to_dict()
    else:
        warn(f"no checkpoint given: weights are RANDOM (seed {seed}). Artifacts are only "
             f"good for testing the pipeline.")
        weights = {"source": f"random init, seed {seed}", "seed": seed}
    return model, weights


@app.command()
def export(
    T: str = typer.Option("8", "--T", help="time steps per clip; a list such as 4,8 exports several buckets"),
    N: Optional[str] = typer.Option(None, "--N", help="views per time step; a list such "
                                    "as 2,4 (default 4; not with --single-view)"),
    height: int = typer.Option(518, "--height", help="image height (multiple of 14)"),
    width: int = typer.Option(518, "--width", help="image width (multiple of 14)"),
    single_view: bool = flag(False, "--single-view", help="VGGT layout [B, S, 3, H, W] (S = --T)"),
    ext_mask: bool = flag(False, "--ext-mask", help="add an ext_mask input [B, T, N, H, W] (SAM2 / SegAnyMo masks)"),
    batch: int = typer.Option(1, help="fixed batch size of the bucket"),
    preset: str = typer.Option("vggt_mv_1b", help="vggt_mv_1b (PAGE-4D layout), vggt_1b, tiny"),
    option: list[str] = typer.Option([], "--option", "-o", help="config override key=value (JSON values), e.g. -o dual_stream=true -o sparse_global=true"),
    checkpoint: Optional[Path] = typer.Option(None, help="PAGE-4D / VGGT-1B checkpoint (.pt)"),
    pi3: Optional[Path] = typer.Option(None, help="Pi3 model.safetensors (stage 1 warm start)"),
    seed_checkpoint: Optional[Path] = typer.Option(None, help="seed prototype (vggt_t_mv) checkpoint"),
    strict: bool = flag(False, help="fail when any model parameter gets no weights"),
    allow_partial_load: bool = flag(
        False, "--allow-partial-load", help="export even when checkpoint tensors do not fit "
        "the configuration or model tensors keep random weights (refused by default)"),
    seed: int = typer.Option(0, help="seed for random init and random validation inputs"),
    opset: int = typer.Option(20, help="ONNX opset"),
    out: Path = typer.Option(Path("artifacts"), help="output root; one folder per bucket"),
    validate: bool = flag(True, help="run both graphs in onnxruntime vs PyTorch after export"),
    input: str = typer.Option("random", "--input", "-i", help="validation inputs: 'random' or a folder like ../shared/data/mv_scene"),
    inputs_alias: Optional[str] = typer.Option(None, "--inputs", hidden=True, help="old spelling of --input"),
    skip_resource_check: bool = flag(False, "--skip-resource-check", help="do not "
                                             "refuse up front when the disk under --out or "
                                             "this machine's memory looks too small for the "
                                             "bucket (estimates: export/resources.py)"),
    atol: Optional[float] = typer.Option(None, help="override absolute tolerance for every output"),
    rtol: Optional[float] = typer.Option(None, help="override relative tolerance for every output"),
) -> None:
    """Trace VGGT_MV at fixed (T, N, H, W) buckets into model.onnx (portable) and
    model.plugins.onnx (TensorRT plugin ops), validate both, write manifest.json."""
    from export.buckets import BucketError, make_buckets
    from export.compare import Tolerance
    from export.exporter import ExportError
    from export.pipeline import (ExportOptions, ValidationError, export_buckets,
                                 read_validation_inputs)

    inputs = inputs_alias or input
    import onnx.defs

    from export.exporter import MIN_OPSET

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        _fail(f"--opset {opset} is not supported: choose {MIN_OPSET}..."
              f"{onnx.defs.onnx_opset_version()} (torch.onnx writes opset {MIN_OPSET}+; "
              f"TensorRT 10.3 / JetPack 6 parses up to 20)")
    try:
        buckets = make_buckets(T, N, height, width, batch=batch, single_view=single_view,
                               ext_mask=ext_mask)
    except BucketError as e:
        _fail(str(e))
    if inputs != "random" and not Path(inputs).is_dir():
        _fail(f"--input {inputs!r} is neither 'random' nor a folder")
    tol = None
    if atol is not None or rtol is not None:
        tol = Tolerance(atol if atol is not None else 1e-3, rtol if rtol is not None else 1e-3)
    opts = ExportOptions(opset=opset, validate=validate, inputs=inputs, seed=seed, tolerance=tol)
    from runtime.errors import RuntimeDataError

    try:  # frames first: a bad --input is reported before the model is built or traced
        feeds = read_validation_inputs(buckets, opts)
    except (RuntimeDataError, OSError) as e:
        _fail(f"--input {inputs}: {e}")
    for flag_name, path in (("--checkpoint", checkpoint), ("--pi3", pi3),
                            ("--seed-checkpoint", seed_checkpoint)):
        if path is not None and not Path(path).is_file():  # bad input before resources
            _fail(f"{flag_name} {path} does not exist (a .pt / .safetensors file)")
    from export.resources import check_resources, estimate

    cfg = _config(preset, option)
    params = _meta_parameters(cfg)
    if skip_resource_check:
        needs = [estimate(cfg, b, params, validate) for b in buckets]
    else:  # disk and memory, before a minute of tracing
        needs = check_resources(cfg, buckets, params, validate, out)
    for b, n in zip(buckets, needs):
        console.print(f"{b.name}: {n.describe()}", markup=False)
    model, weights = _build_model(preset, option, checkpoint, pi3, seed_checkpoint, seed, strict,
                                  allow_partial_load)
    t_all = time.perf_counter()
    try:
        results = export_buckets(model, buckets, out, opts, weights,
                                 log=lambda s: console.print(s, markup=False),
                                 rule=lambda name: console.rule(name), feeds=feeds)
    except ValidationError as e:
        _fail(str(e), code=1)
    except (ExportError, BucketError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from export.resources import export_disk_bytes

        _fail(f"disk full writing {e.filename or out}: this export needs ~"
              f"{export_disk_bytes(needs) / 1e9:.2f} GB under {out}; nothing of the "
              f"failed bucket was kept; free space there or choose another --out", code=1)
    _summary(results, time.perf_counter() - t_all)


def _summary(results, seconds: float) -> None:
    import resource

    table = Table(title="export summary")
    for col in ("bucket", "files", "size", "shared weights", "sites (biased/sparse)",
                "export s", "validate", "folder"):
        table.add_column(col)
    shared: dict[str, int] = {}  # counted once per distinct file on disk
    own_total = 0
    for r in results:
        m = r.manifest
        size = sum(f["bytes"] for f in m["files"])
        own_total += size
        sw = m.get("shared_weights")
        if sw:
            key = sw["sha256"] if sw.get("store") else f"{r.bucket.name}:{sw['sha256']}"
            shared[key] = sw["bytes"]
        v = m.get("validation")
        vtxt = "skipped" if not v else ("PASS" if v.get("passed") else "FAIL")
        sites = m["attention_sites"]
        table.add_row(r.bucket.name, str(len(m["files"])), f"{size / 1e6:,.1f} MB",
                      (f"{sw['bytes'] / 1e6:,.1f} MB {sw['sha256'][:8]}"
                       + ("" if sw.get("store") else " (own copy)")) if sw else "-",
                      "/".join(str(x) for x in sites.values()),
                      f"{m['seconds'].get('export', 0):.1f}", vtxt, str(r.folder))
    console.print(table)
    console.print(f"disk: {(own_total + sum(shared.values())) / 1e6:,.1f} MB for "
                  f"{len(results)} bucket(s): {own_total / 1e6:,.1f} MB of graphs + "
                  f"{sum(shared.values()) / 1e6:,.1f} MB of weights ({len(shared)} file(s) on "
                  f"disk, hard-linked into the buckets)", markup=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"wall time {seconds:.1f} s, peak memory {peak:,.0f} MB")


@app.command("model-info")
def model_info(
    preset: str = typer.Option("vggt_mv_1b"),
    option: list[str] = typer.Option([], "--option", "-o", help="config override key=value"),
    T: int = typer.Option(8, "--T", min=1), N: int = typer.Option(4, "--N", min=1),
    height: int = typer.Option(518, "--height", min=1),
    width: int = typer.Option(518, "--width", min=1),
) -> None:
    """Parameters, attention sites and sequence lengths for a bucket (no weights allocated)."""
    import torch

    from runtime.layout import Bucket
    from vggt_mv.models import VGGTMV

    cfg = _config(preset, option)
    Bucket(T, N, height, width).validate(cfg.patch_size)  # refused with the nearest valid size
    with torch.device("meta"):
        model = VGGTMV(cfg)
    sites = model.attention_sites((1, T, N, 3, height, width))
    F = cfg.patch_start_idx + (height // cfg.patch_size) * (width // cfg.patch_size)
    table = Table(title=f"{cfg.name} at T={T}, N={N}, {height}x{width}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{model.num_parameters():,}")
    table.add_row("tokens per frame", str(F))
    table.add_row("Time-SA sequence (B*N x T*F)", f"{N} x {T * F}")
    table.add_row("View-SA sequence (B*T x N*F)", f"{T} x {N * F}")
    for k, v in sites.items():
        table.add_row(f"{k} sites", str(v))
    from export.resources import available_memory_bytes, estimate

    for validate in (True, False):
        n = estimate(cfg, Bucket(T, N, height, width), model.num_parameters(), validate)
        table.add_row(f"export{'' if validate else ' --no-validate'}: disk / peak memory",
                      f"~{n.disk_bytes / 1e9:.2f} GB / ~{n.memory_bytes / 1e9:.1f} GB")
    n = estimate(cfg, Bucket(T, N, height, width), model.num_parameters(), False)
    table.add_row("disk: each bucket's graphs", f"~{(n.disk_bytes - n.shared_bytes) / 1e9:.2f} GB")
    table.add_row("disk: weights, shared by every bucket (once)",
                  f"~{n.shared_bytes / 1e9:.2f} GB" if n.shared_bytes else "in the graphs")
    params = model.num_parameters()
    for prec, width_b in (("fp32", 4), ("fp16", 2), ("int8", 1)):
        table.add_row(f"disk: {prec} engine weights (0 with --strip-weights)",
                      f"~{params * width_b / 1e9:.2f} GB + kernels")
    table.add_row("memory available here", f"{available_memory_bytes() / 1e9:.1f} GB")
    console.print(table)


@app.command("inspect-checkpoint")
def inspect_checkpoint_cmd(
    path: Path = typer.Argument(..., help="checkpoint: .pt/.pth (PAGE-4D, VGGT-1B, seed prototype) or Pi3 .safetensors"),
    preset: str = typer.Option("vggt_mv_1b", help="configuration to match the file against"),
    option: list[str] = typer.Option([], "--option", "-o", help="config override key=value"),
    sha256: bool = flag(False, help="also hash the file (slow for 5 GB)"),
) -> None:
    """What a checkpoint holds (kind, tensors, parameters, dtypes) and how it would load into
    a VGGT_MV configuration: loaded / skipped / shape-mismatched / missing / unexpected,
    grouped by module. Nothing is allocated at model size (meta device)."""
    from vggt_mv.weights import CheckpointError, inspect_checkpoint

    cfg = _config(preset, option)
    try:
        report = inspect_checkpoint(path, config=cfg, hash_file=sha256)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    text = report.as_table() if hasattr(report, "as_table") else json.dumps(report, indent=1, default=str)
    console.print(text, markup=False, soft_wrap=True)


def _register_optional_commands() -> None:
    """Commands whose modules belong to other steps; each module keeps its heavy imports
    inside the command function, so registration costs nothing."""
    from calib.commands import calibrate, quantize
    from accuracy.commands import bench, check
    from runtime.batch.command import batch
    from runtime.commands import build_engine
    from serving.commands import export_triton, infer, serve

    app.command("calibrate")(calibrate)
    app.command("quantize")(quantize)
    app.command("build-engine")(build_engine)
    app.command("infer")(infer)
    app.command("batch")(batch)
    app.command("check")(check)
    app.command("bench")(bench)
    app.command("export-triton")(export_triton)
    app.command("serve")(serve)


_register_optional_commands()


def main() -> None:
    from runtime.console import run_guarded

    run_guarded(app)


if __name__ == "__main__":
    main()
