"""Three-stage weight loading of VGGT_MV (design notes 001 / 003 / 004):

  stage 1  Pi3: DINOv2 encoder, decoder blocks -> the first frame/global blocks, register token
  stage 2  PAGE-4D / VGGT-1B checkpoint, then the seed prototype: override whatever they hold
  stage 3  modules no checkpoint provided: dual-stream blocks copied from the main-stream
           frame/global block of the same layer, sparse blocks from the global block of
           their layer, lambdas = 0, memory tokens and mask-fusion gates keep their init

Everything is planned from names and shapes first, so strict mode fails before the model
is touched and a model on the meta device gets a complete report without any data.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import VGGTMVConfig, get_config
from .mapping import (ALIAS, LOAD, MISMATCH, SKIP, STATUSES, UNEXPECTED, Entry, Shape,
                      adapt_tensor, group_of, plan_source)
from .sources import KINDS, CheckpointError, CheckpointLike, CheckpointSource, open_checkpoint

# slot -> (stage, kinds it accepts); the order of this dict is the order of application
SLOTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "pi3": (1, ("pi3",)),
    "checkpoint": (2, ("page4d", "vggt", "vggt_mv")),
    # after the checkpoint: the prototype is the multi-view descendant of PAGE-4D, so where
    # both hold a tensor the prototype's is the more specific one
    "seed": (2, ("seed", "vggt_mv")),
}
_ARG_FOR_SLOT = {"pi3": "pi3=", "checkpoint": "checkpoint=", "seed": "seed_checkpoint="}
STAGE3 = "stage3"


class LoadError(RuntimeError):
    """strict=True and some model parameters received no weights."""

    def __init__(self, message: str, report: "LoadReport"):
        super().__init__(message)
        self.report = report


def slot_for_kind(kind: str) -> str | None:
    for slot, (_, kinds) in SLOTS.items():
        if kind in kinds:
            return slot
    return None


# ---------------------------------------------------------------------------- reports
@dataclass
class SourceReport:
    slot: str
    stage: int
    path: str | None
    kind: str
    format: str
    sha256: str | None
    num_tensors: int
    num_params: int
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)
    tensors_read: int = 0

    def by_status(self, status: str) -> list[Entry]:
        return [e for e in self.entries if e.status == status]

    @property
    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for e in self.entries:
            c[e.status] += 1
        return c

    def groups(self) -> dict[str, dict[str, int]]:
        """Non-zero status counts per module group."""
        out: dict[str, Counter] = defaultdict(Counter)
        for e in self.entries:
            out[e.group][e.status] += 1
        return {g: dict(c) for g, c in out.items()}

    def skipped_by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for e in self.by_status(SKIP):
            out[e.reason].append(e.source)
        return dict(out)

    def to_dict(self) -> dict[str, Any]:
        skipped = {}
        for reason, names in self.skipped_by_reason().items():
            skipped[reason] = {"count": len(names),
                               "groups": dict(Counter(group_of(n) for n in names)),
                               "examples": names[:3]}
        alias_pairs = Counter((group_of(e.source), group_of(e.alias_of or ""))
                              for e in self.by_status(ALIAS))
        return {
            "slot": self.slot, "stage": self.stage, "path": self.path, "kind": self.kind,
            "format": self.format, "sha256": self.sha256, "num_tensors": self.num_tensors,
            "num_params": self.num_params, "tensors_read": self.tensors_read,
            "counts": self.counts,
            "groups": self.groups(),
            "skipped": skipped,
            "mismatched": [{"source": e.source, "target": e.target, "expected": list(e.expected),
                            "got": list(e.got)} for e in self.by_status(MISMATCH)],
            "unexpected": [{"source": e.source, "reason": e.reason}
                           for e in self.by_status(UNEXPECTED)],
            "aliases": {"count": len(self.by_status(ALIAS)),
                        "pairs": [{"alias": a, "of": b, "count": n}
                                  for (a, b), n in alias_pairs.items()]},
            "notes": list(self.notes),
        }


@dataclass
class Stage3Entry:
    target: str
    action: str          # "copy" | "init"
    origin: str          # copied-from parameter, or the init rule

    @property
    def module(self) -> str:
        return ".".join(self.target.split(".")[:3]) if self.action == "copy" else \
            group_of(self.target)


# Modules a VGGT / Pi3 checkpoint cannot provide: initialised by design (the seeds' rules).
NEW_IN_PAGE4D = ("aggregator.spatial_mask_head.",)


@dataclass
class LoadReport:
    config_name: str
    model_tensors: dict[str, Shape]
    sources: list[SourceReport]
    history: dict[str, list[str]]          # target -> slots that wrote it, in order
    stage3: list[Stage3Entry]
    missing: list[str]
    dry_run: bool = False

    # --- derived
    def gaps(self) -> list[str]:
        """What this load leaves wrong beyond what the plan expects (empty: a good load).

        Expected by design: PAGE-4D's spatial mask head is random when no PAGE-4D
        checkpoint is given (VGGT / Pi3 have none). Everything else counts: checkpoint
        tensors whose shape does not fit the configuration, and model tensors that would
        keep their random initialisation."""
        problems = []
        mism = [e for s in self.sources for e in s.by_status(MISMATCH)]
        if mism:
            e = mism[0]
            problems.append(f"{len(mism)} checkpoint tensors do not fit the configuration's "
                            f"shapes (e.g. {e.source}: checkpoint {list(e.got)}, model "
                            f"{list(e.expected)})")
        page4d = any(s.kind == "page4d" for s in self.sources)
        unexpected = [m for m in self.missing
                      if page4d or not m.startswith(NEW_IN_PAGE4D)]
        if unexpected:
            gs = Counter(group_of(m) for m in unexpected)
            problems.append(f"{len(unexpected)} of {len(self.model_tensors)} model tensors "
                            f"would keep random weights ("
                            + ", ".join(f"{g}: {n}" for g, n in gs.most_common(5)) + ")")
        return problems

    @property
    def provenance(self) -> dict[str, str]:
        """Final origin of every model tensor: a slot, 'stage3', or 'missing'."""
        out = {t: "missing" for t in self.model_tensors}
        for t, slots in self.history.items():
            out[t] = slots[-1]
        for s in self.stage3:
            out[s.target] = STAGE3
        return out

    @property
    def loaded(self) -> int:
        return len(self.history)

    @property
    def overridden(self) -> dict[str, list[str]]:
        return {t: s for t, s in self.history.items() if len(s) > 1}

    def source(self, slot: str) -> SourceReport:
        for s in self.sources:
            if s.slot == slot:
                return s
        raise KeyError(slot)

    def groups(self) -> dict[str, dict[str, int]]:
        cols = [s.slot for s in self.sources] + [STAGE3, "missing"]
        out: dict[str, dict[str, int]] = {}
        for t, origin in self.provenance.items():
            row = out.setdefault(group_of(t), {"tensors": 0, **{c: 0 for c in cols}})
            row["tensors"] += 1
            row[origin] += 1
        return out

    def stage3_summary(self) -> list[dict[str, Any]]:
        agg: dict[tuple[str, str, str], int] = Counter()
        for s in self.stage3:
            origin = ".".join(s.origin.split(".")[:3]) if s.action == "copy" else s.origin
            agg[(s.module, s.action, origin)] += 1
        return [{"module": m, "action": a, "from": o, "tensors": n} for (m, a, o), n in agg.items()]

    def summary(self) -> str:
        used = " + ".join(f"{s.slot}:{s.kind}" for s in self.sources)
        return (f"{used}; {self.loaded}/{len(self.model_tensors)} tensors loaded, "
                f"{len(self.stage3)} from stage 3, {len(self.missing)} missing")

    # --- output
    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.summary(),
            "config": self.config_name,
            "dry_run": self.dry_run,
            "model_tensors": len(self.model_tensors),
            "loaded": self.loaded,
            "overridden": len(self.overridden),
            "sources": [s.to_dict() for s in self.sources],
            "groups": self.groups(),
            "stage3": self.stage3_summary(),
            "missing": list(self.missing),
        }

    def as_table(self, max_list: int = 12) -> str:
        L: list[str] = []
        total_params = 0
        for shp in self.model_tensors.values():
            n = 1
            for d in shp:
                n *= d
            total_params += n
        L.append(f"VGGT_MV weights: config {self.config_name}, {len(self.model_tensors)} tensors, "
                 f"{total_params:,} parameters" + ("  (DRY RUN: nothing copied)" if self.dry_run
                                                   else ""))
        L.append("")
        L.append("Sources, in order of application (later stages override earlier ones)")
        L.append(f"  {'stage':<5} {'slot':<10} {'kind':<8} {'tensors':>7} {'loaded':>6} "
                 f"{'skipped':>7} {'mismatch':>8} {'unexpect':>8} {'alias':>5}")
        for s in self.sources:
            c = s.counts
            L.append(f"  {s.stage:<5} {s.slot:<10} {s.kind:<8} {s.num_tensors:>7} {c[LOAD]:>6} "
                     f"{c[SKIP]:>7} {c[MISMATCH]:>8} {c[UNEXPECTED]:>8} {c[ALIAS]:>5}")
            L.append(f"        file {s.path or '(in memory)'}")
            L.append(f"        {s.format}, sha256 {s.sha256 or '(not computed)'}, "
                     f"{s.tensors_read} tensors read")
        L.append("")
        groups = self.groups()
        cols = [s.slot for s in self.sources] + [STAGE3, "missing"]
        width = max([len("module")] + [len(g) for g in groups]) + 2
        cw = max(len(c) for c in cols) + 2
        L.append("Model tensors by module, by final origin")
        L.append("  " + f"{'module':<{width}}{'tensors':>8}" + "".join(f"{c:>{cw}}" for c in cols))
        tot = Counter()
        for g in sorted(groups):
            row = groups[g]
            tot.update(row)
            L.append("  " + f"{g:<{width}}{row['tensors']:>8}" +
                     "".join(f"{row[c]:>{cw}}" for c in cols))
        L.append("  " + f"{'total':<{width}}{tot['tensors']:>8}" +
                 "".join(f"{tot[c]:>{cw}}" for c in cols))
        ov = self.overridden
        if ov:
            paths = Counter(" -> ".join(v) for v in ov.values())
            L.append("  overridden: " + "; ".join(f"{n} tensors {p}" for p, n in paths.items()))
        if self.stage3:
            L.append("")
            L.append("Stage 3 (modules no checkpoint provided)")
            for r in self.stage3_summary():
                verb = "<- copy of" if r["action"] == "copy" else "=" 
                L.append(f"  {r['module']} {verb} {r['from']} ({r['tensors']} tensors)")
        for s in self.sources:
            parts = []
            for reason, names in s.skipped_by_reason().items():
                gs = Counter(group_of(n) for n in names)
                parts.append(f"  skipped {len(names)}: {reason} "
                             f"({', '.join(f'{g} {n}' for g, n in gs.items())})")
            for e in s.by_status(MISMATCH)[:max_list]:
                parts.append(f"  shape mismatch {e.source} -> {e.target}: expected "
                             f"{list(e.expected)}, got {list(e.got)}")
            if len(s.by_status(MISMATCH)) > max_list:
                parts.append(f"  ... {len(s.by_status(MISMATCH)) - max_list} more "
                             "mismatches")
            unexp = s.by_status(UNEXPECTED)
            for e in unexp[:max_list]:
                parts.append(f"  unexpected {e.source}"
                             + (f" ({e.reason})" if e.reason else ""))
            if len(unexp) > max_list:
                parts.append(f"  ... {len(unexp) - max_list} more unexpected")
            alias_pairs = Counter((group_of(e.source), group_of(e.alias_of or ""))
                                  for e in s.by_status(ALIAS))
            for (a, b), n in alias_pairs.items():
                parts.append(f"  {n} alias keys {a}.* duplicate {b}.* (loaded once)")
            for note in s.notes:
                parts.append(f"  note: {note}")
            if parts:
                L.append("")
                L.append(f"Details of {s.slot}: {KINDS.get(s.kind, s.kind)}")
                L.extend(parts)
        L.append("")
        if self.missing:
            gs = Counter(group_of(m) for m in self.missing)
            L.append(f"MISSING: {len(self.missing)} model tensors received no weights: "
                     + ", ".join(f"{g} {n}" for g, n in gs.items()))
            for m in self.missing[:max_list]:
                L.append(f"  {m}")
            if len(self.missing) > max_list:
                L.append(f"  ... {len(self.missing) - max_list} more")
        else:
            L.append("Missing: none (every model tensor has weights)")
        return "\n".join(L)

    def __str__(self) -> str:
        return self.as_table()


# ---------------------------------------------------------------------------- planning
_DUAL_RE = re.compile(r"^aggregator\.(pose|geo)_(frame|global)_blocks\.(\d+)\.(.+)$")
_SPARSE_RE = re.compile(r"^aggregator\.sparse_blocks\.(\d+)\.(.+)$")
_INIT_RULES = [
    (re.compile(r"^aggregator\.lambda_\w+_logit$"), "0 (design rule: streams start unbiased)",
     0.0),
    (re.compile(r"^aggregator\.memory_tokens$"), "own init (new memory bank, trained from "
                                                 "scratch)", None),
    (re.compile(r"^aggregator\.dynamic_mask_head\.(alpha|beta)$"),
     "own init 1.0 (M = sigmoid(M_tilde + M_ext), PAGE-4D behaviour)", None),
]


def _stage3_plan(cfg: VGGTMVConfig, targets: Mapping[str, Shape],
                 provided: set[str]) -> list[Stage3Entry]:
    out = []
    for t in targets:
        if t in provided:
            continue
        src = None
        m = _DUAL_RE.match(t)
        if m and int(m.group(3)) < len(cfg.dual_stream_layers):
            layer = cfg.dual_stream_layers[int(m.group(3))]
            src = f"aggregator.{m.group(2)}_blocks.{layer}.{m.group(4)}"
        m = _SPARSE_RE.match(t)
        if m and int(m.group(1)) < len(cfg.sparse_layers):
            src = f"aggregator.global_blocks.{cfg.sparse_layers[int(m.group(1))]}.{m.group(2)}"
        if src is not None:
            # copying a never-loaded main block would only copy its random init: leave such
            # tensors missing so the report (and strict) tells the truth
            if src in provided and tuple(targets.get(src, ())) == tuple(targets[t]):
                out.append(Stage3Entry(t, "copy", src))
            continue
        for rx, rule, _ in _INIT_RULES:
            if rx.match(t):
                out.append(Stage3Entry(t, "init", rule))
                break
    return out


def plan_load(target_shapes: Mapping[str, Shape], cfg: VGGTMVConfig,
              sources: list[tuple[str, CheckpointSource]], hash_files: bool = True,
              dry_run: bool = False) -> LoadReport:
    """The complete load decision from names and shapes (no tensor is read)."""
    reports = []
    history: dict[str, list[str]] = {}
    for slot, src in sources:
        stage, kinds = SLOTS[slot]
        kind = src.kind
        if kind not in kinds:
            if kind == "unknown":
                first = ", ".join(src.names()[:5])
                raise CheckpointError(src.path, f"none of its {len(src.names())} tensor names "
                                                "looks like VGGT / PAGE-4D / Pi3 / the seed "
                                                f"prototype (first: {first})")
            right = slot_for_kind(kind)
            raise CheckpointError(src.path, f"is a {KINDS[kind]} checkpoint but was passed as "
                                            f"{_ARG_FOR_SLOT[slot]}; pass it as "
                                            f"{_ARG_FOR_SLOT[right]}")
        plan = plan_source(kind, src.shapes(), target_shapes, cfg)
        reports.append(SourceReport(
            slot=slot, stage=stage, path=src.path, kind=kind, format=src.format,
            sha256=src.sha256() if hash_files else None, num_tensors=len(src.names()),
            num_params=src.num_params(), entries=plan.entries,
            notes=list(src.notes) + plan.notes))
        for e in plan.by_status(LOAD):
            history.setdefault(e.target, []).append(slot)
    stage3 = _stage3_plan(cfg, target_shapes, set(history))
    done = set(history) | {s.target for s in stage3}
    missing = [t for t in target_shapes if t not in done]
    return LoadReport(cfg.name, dict(target_shapes), reports, history, stage3, missing,
                      dry_run=dry_run)


# ---------------------------------------------------------------------------- loading
def _model_config(model: nn.Module) -> VGGTMVConfig:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, VGGTMVConfig):
        raise TypeError("load_weights expects a VGGTMV model (with .config)")
    return cfg


def load_weights(model: nn.Module, checkpoint: CheckpointLike | None = None,
                 pi3: CheckpointLike | None = None,
                 seed_checkpoint: CheckpointLike | None = None, strict: bool = False,
                 hash_files: bool = True) -> LoadReport:
    """Load checkpoints into `model` in place (stage 1 Pi3, stage 2 checkpoint then seed,
    stage 3 new modules) and report what came from where.

    Each source is a path (.pt/.pth/.bin, .safetensors, or a .json names/shapes manifest),
    a state dict, or a CheckpointSource. A model on the meta device is planned only
    (dry run). strict=True raises LoadError, before anything is copied, when any model
    tensor would get no weights.
    """
    cfg = _model_config(model)
    given = [(slot, x) for slot, x in (("pi3", pi3), ("checkpoint", checkpoint),
                                       ("seed", seed_checkpoint)) if x is not None]
    if not given:
        raise ValueError("load_weights needs at least one of checkpoint=, pi3=, seed_checkpoint=")
    params = model.state_dict(keep_vars=True)
    target_shapes = {k: tuple(v.shape) for k, v in params.items()}
    dry = any(v.device.type == "meta" for v in params.values())
    opened: list[tuple[str, CheckpointSource]] = []
    owned: list[CheckpointSource] = []
    try:
        for slot, x in given:
            src = open_checkpoint(x)
            opened.append((slot, src))
            if src is not x:
                owned.append(src)
        if not dry:
            for _, src in opened:
                if not src.has_data:
                    raise CheckpointError(src.path, "is a names/shapes manifest; it can only "
                                                    "plan a load into a model on the meta device")
        report = plan_load(target_shapes, cfg, opened, hash_files=hash_files, dry_run=dry)
        if strict and report.missing:
            gs = Counter(group_of(m) for m in report.missing)
            shown = "\n  ".join(report.missing[:40])
            more = f"\n  ... {len(report.missing) - 40} more" if len(report.missing) > 40 else ""
            raise LoadError(
                f"strict load: {len(report.missing)} model tensors would receive no weights "
                f"({', '.join(f'{g}: {n}' for g, n in gs.items())}); nothing was copied.\n  "
                f"{shown}{more}", report)
        if not dry:
            _apply(params, opened, report)
    finally:
        for src in owned:
            src.close()
    return report


def _apply(params: dict[str, torch.Tensor], opened: list[tuple[str, CheckpointSource]],
           report: LoadReport) -> None:
    with torch.no_grad():
        for (slot, src), srep in zip(opened, report.sources):
            for e in srep.by_status(LOAD):
                dst = params[e.target]
                t = adapt_tensor(e.adapt, src.get(e.source), dst.shape)
                dst.copy_(t)
                srep.tensors_read += 1
            _verify_aliases(src, srep)
        # after every stage, so dual/sparse blocks copy the final main-stream values
        for s in report.stage3:
            dst = params[s.target]
            if s.action == "copy":
                dst.copy_(params[s.origin])
            else:
                for rx, _, value in _INIT_RULES:
                    if rx.match(s.target) and value is not None:
                        dst.fill_(value)


def _verify_aliases(src: CheckpointSource, srep: SourceReport) -> None:
    """An alias key must hold the very tensor it duplicates; a prototype file whose copies
    drifted apart would otherwise load one of two different values without a word."""
    differing = []
    for e in srep.by_status(ALIAS):
        a, b = src.get(e.source), src.get(e.alias_of)
        if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
            continue  # one shared storage (torch.save keeps module aliases shared)
        if not torch.equal(a, b):
            differing.append(e.source)
    if differing:
        srep.notes.append(f"{len(differing)} alias keys hold values different from the key "
                          f"they duplicate; the primary was loaded (e.g. {differing[0]} "
                          f"vs its primary)")


# ---------------------------------------------------------------------------- inspection
@dataclass
class CheckpointInspection:
    path: str | None
    format: str
    kind: str
    sha256: str | None
    num_tensors: int
    num_params: int
    dtypes: dict[str, int]
    prefixes: dict[str, int]
    notes: list[str]
    match: LoadReport | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "format": self.format, "kind": self.kind,
             "kind_description": KINDS.get(self.kind, self.kind), "sha256": self.sha256,
             "num_tensors": self.num_tensors, "num_params": self.num_params,
             "dtypes": dict(self.dtypes), "prefixes": dict(self.prefixes),
             "notes": list(self.notes), "match": None}
        if self.match is not None:
            s = self.match.sources[0]
            d["match"] = {"config": self.match.config_name, "slot": s.slot, **s.counts,
                          "model_tensors": len(self.match.model_tensors),
                          "stage3": len(self.match.stage3),
                          "missing": len(self.match.missing)}
        return d

    def as_table(self) -> str:
        L = [f"checkpoint {self.path or '(memory)'}",
             f"  kind     {self.kind}: {KINDS.get(self.kind, '')}",
             f"  format   {self.format}",
             f"  sha256   {self.sha256 or '-'}",
             f"  tensors  {self.num_tensors:,}   parameters {self.num_params:,}",
             "  dtypes   " + ", ".join(f"{k} {v}" for k, v in sorted(self.dtypes.items())),
             "  prefixes"]
        w = max(len(p) for p in self.prefixes) + 2
        for p, n in self.prefixes.items():
            L.append(f"    {p:<{w}}{n:>6}")
        for n in self.notes:
            L.append(f"  note: {n}")
        if self.match is not None:
            L.append("")
            L.append(f"Against config {self.match.config_name} (as {self.match.sources[0].slot}, "
                     "alone):")
            L.append(self.match.as_table())
        return "\n".join(L)


def inspect_checkpoint(path: CheckpointLike, config: VGGTMVConfig | str | None = None,
                       hash_file: bool = False) -> CheckpointInspection:
    """What a checkpoint file holds, and (given a config) how it would load on its own."""
    src = open_checkpoint(path)
    try:
        names = src.names()
        dtypes = Counter(src.dtype(n) for n in names)
        prefixes = Counter(group_of(n) for n in names)
        ins = CheckpointInspection(
            path=src.path, format=src.format, kind=src.kind,
            sha256=src.sha256() if hash_file else None, num_tensors=len(names),
            num_params=src.num_params(), dtypes=dict(dtypes), prefixes=dict(prefixes),
            notes=list(src.notes))
        if config is not None:
            cfg = get_config(config) if isinstance(config, str) else config
            slot = slot_for_kind(src.kind)
            if slot is None:
                ins.notes.append("unrecognized kind: no match against the config")
            else:
                from ..models.vggt_mv import VGGTMV

                with torch.device("meta"):
                    twin = VGGTMV(cfg)
                shapes = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
                ins.match = plan_load(shapes, cfg, [(slot, src)], hash_files=False, dry_run=True)
        return ins
    finally:
        if src is not path:
            src.close()
