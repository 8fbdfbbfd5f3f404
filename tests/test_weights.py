"""Weight loading: (a) full-size name/shape plans from the reference manifests against
models on the meta device (exact counts per source), (b) real loads of synthetic tiny
checkpoints in every source layout (values land, order of stages, stage-3 copies, strict
mode), (c) bad files fail with a CheckpointError naming the file."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from functools import lru_cache

import pytest
import torch
from safetensors.torch import save_file

from vggt_mv.config import get_config, tiny_config
from vggt_mv.models import VGGTMV
from vggt_mv.weights import (CheckpointError, LoadError, detect_kind, group_of,
                             inspect_checkpoint, load_weights, map_name, open_checkpoint)

BLOCK = 18  # tensors per attention block (norm1 2, qkv 2, q/k norm 4, proj 2, ls 2, norm2 2, mlp 4)
SEED = "mv_page4d_seed_vggt_t_mv.json"


# ============================================================================ (a) full size
@lru_cache(maxsize=None)
def _meta(preset: str, opts: tuple = ()) -> VGGTMV:
    with torch.device("meta"):
        return VGGTMV(get_config(preset, **dict(opts)))


def meta(preset: str = "vggt_mv_1b", **opts) -> VGGTMV:
    if any(isinstance(v, dict) for v in opts.values()):  # nested options: not cacheable
        with torch.device("meta"):
            return VGGTMV(get_config(preset, **opts))
    return _meta(preset, tuple(sorted(opts.items())))


def counts(report, slot):
    return report.source(slot).counts


def by_group(names):
    out = {}
    for n in names:
        out[group_of(n)] = out.get(group_of(n), 0) + 1
    return out


def test_kinds_of_reference_manifests(state_dict_refs):
    kinds = {f: open_checkpoint(state_dict_refs / f).kind
             for f in ("page4d.json", "vggt_1b.json", "pi3.json", SEED)}
    assert kinds == {"page4d.json": "page4d", "vggt_1b.json": "vggt", "pi3.json": "pi3",
                     SEED: "seed"}
    own = [n for n in meta(dual_stream=True).state_dict()]
    assert detect_kind(own) == "vggt_mv"
    assert detect_kind(["foo.weight"]) == "unknown"


def test_page4d_full_size_loads_everything(state_dict_refs):
    r = load_weights(meta(), checkpoint=state_dict_refs / "page4d.json", strict=True)
    assert r.dry_run
    assert counts(r, "checkpoint") == {"loaded": 1805, "skipped": 0, "mismatched": 0,
                                       "unexpected": 0, "alias": 0}
    assert r.loaded == 1805 and r.missing == [] and r.stage3 == []
    assert set(r.provenance.values()) == {"checkpoint"}


def test_vggt1b_full_size(state_dict_refs):
    r = load_weights(meta(), checkpoint=state_dict_refs / "vggt_1b.json")
    assert r.source("checkpoint").kind == "vggt"
    assert counts(r, "checkpoint")["loaded"] == 1797
    assert len(r.missing) == 8
    assert all(m.startswith("aggregator.spatial_mask_head.") for m in r.missing)
    with pytest.raises(LoadError, match="8 model tensors"):
        load_weights(meta(), checkpoint=state_dict_refs / "vggt_1b.json", strict=True)

    r = load_weights(meta("vggt_1b"), checkpoint=state_dict_refs / "vggt_1b.json", strict=True)
    assert counts(r, "checkpoint")["loaded"] == 1797 and r.missing == []

    # PAGE-4D into a model without the mask head: the head is skipped with the reason
    r = load_weights(meta("vggt_1b"), checkpoint=state_dict_refs / "page4d.json")
    c = counts(r, "checkpoint")
    assert (c["loaded"], c["skipped"], c["unexpected"]) == (1797, 8, 0)
    assert list(r.source("checkpoint").skipped_by_reason()) == [
        "config.mask_head is off (no PAGE-4D mask head in this model)"]


def test_disabled_head_is_skipped_not_unexpected(state_dict_refs):
    r = load_weights(meta(heads={"track": False}), checkpoint=state_dict_refs / "page4d.json",
                     strict=True)
    s = r.source("checkpoint")
    assert (s.counts["loaded"], s.counts["skipped"], s.counts["unexpected"]) == (1411, 394, 0)
    assert list(s.skipped_by_reason()) == ["config.heads.track is off"]


def test_pi3_full_size(state_dict_refs):
    r = load_weights(meta(), pi3=state_dict_refs / "pi3.json")
    s = r.source("pi3")
    assert s.num_tensors == 1210
    assert s.counts == {"loaded": 992, "skipped": 218, "mismatched": 0, "unexpected": 0,
                        "alias": 0}
    loaded = {e.source: e.target for e in s.by_status("loaded")}
    assert by_group(loaded.values()) == {"aggregator.patch_embed": 343,
                                         "aggregator.frame_blocks": 18 * BLOCK,
                                         "aggregator.global_blocks": 18 * BLOCK,
                                         "aggregator.register_token": 1}
    assert loaded["decoder.34.attn.qkv.weight"] == "aggregator.frame_blocks.17.attn.qkv.weight"
    assert loaded["decoder.35.ls2.gamma"] == "aggregator.global_blocks.17.ls2.gamma"
    assert loaded["encoder.patch_embed.proj.weight"] == \
        "aggregator.patch_embed.patch_embed.proj.weight"
    adapted = [e for e in s.by_status("loaded") if e.adapt is not None]
    assert [e.source for e in adapted] == ["register_token"]
    reg = adapted[0]
    assert (reg.got, reg.expected) == ((1, 1, 5, 1024), (1, 2, 4, 1024))
    # Pi3's own camera_head.* must never land in VGGT's camera head
    skipped = s.skipped_by_reason()
    assert sum(len(v) for v in skipped.values()) == 218
    assert by_group(n for v in skipped.values() for n in v) == {
        "image_mean": 1, "image_std": 1, "point_decoder": 64, "point_head": 2,
        "conf_decoder": 64, "conf_head": 2, "camera_decoder": 64, "camera_head": 20}
    # what Pi3 alone leaves: layers 18..23, mask_token, camera token, mask head, all heads
    assert len(r.missing) == 813
    assert by_group(r.missing) == {
        "aggregator.camera_token": 1, "aggregator.patch_embed": 1,
        "aggregator.frame_blocks": 6 * BLOCK, "aggregator.global_blocks": 6 * BLOCK,
        "aggregator.spatial_mask_head": 8, "camera_head": 69, "point_head": 62,
        "depth_head": 62, "track_head": 394}
    assert "aggregator.patch_embed.mask_token" in r.missing
    assert "aggregator.frame_blocks.18.attn.qkv.weight" in r.missing
    assert "aggregator.frame_blocks.17.attn.qkv.weight" not in r.missing


def test_pi3_on_tiny_depth_skips_deep_blocks(state_dict_refs):
    with torch.device("meta"):
        m = VGGTMV(tiny_config(embed_dim=1024, num_heads=16,
                               encoder={"embed_dim": 1024, "num_heads": 16, "depth": 24}))
    s = load_weights(m, pi3=state_dict_refs / "pi3.json").source("pi3")
    # 4 layers take decoder.0..7; decoder.8..35 are skipped for depth, not "unexpected"
    assert s.counts["loaded"] == 343 + 8 * BLOCK + 1
    assert s.counts["unexpected"] == 0
    depth_reason = [r for r in s.skipped_by_reason() if "config.depth = 4" in r]
    assert sum(len(s.skipped_by_reason()[r]) for r in depth_reason) == 28 * BLOCK


def test_pi3_then_page4d_full_size(state_dict_refs):
    r = load_weights(meta(), pi3=state_dict_refs / "pi3.json",
                     checkpoint=state_dict_refs / "page4d.json", strict=True)
    assert [s.slot for s in r.sources] == ["pi3", "checkpoint"]
    assert set(r.provenance.values()) == {"checkpoint"}
    assert len(r.overridden) == 992
    assert set(map(tuple, r.overridden.values())) == {("pi3", "checkpoint")}


def test_seed_full_size_default_config(state_dict_refs):
    r = load_weights(meta(), seed_checkpoint=state_dict_refs / SEED)
    s = r.source("seed")
    assert s.num_tensors == 3401
    assert s.counts == {"loaded": 1801, "skipped": 372, "mismatched": 4, "unexpected": 0,
                        "alias": 1224}
    aliases = {e.source: e.alias_of for e in s.by_status("alias")}
    assert aliases["aggregator.frame_blocks.3.mlp.fc1.weight"] == \
        "aggregator.time_blocks.3.mlp.fc1.weight"
    assert aliases["aggregator.pose_global_blocks.4.ls1.gamma"] == \
        "aggregator.pose_view_blocks.4.ls1.gamma"
    loaded = {e.source: e.target for e in s.by_status("loaded")}
    assert loaded["aggregator.view_blocks.23.attn.proj.bias"] == \
        "aggregator.global_blocks.23.attn.proj.bias"
    mism = {e.source: (e.expected, e.got) for e in s.by_status("mismatched")}
    assert mism == {
        "camera_head.empty_pose_tokens": ((1, 1, 9), (1, 1, 12)),
        "camera_head.embed_pose.weight": ((2048, 9), (2048, 12)),
        "camera_head.pose_branch.fc2.weight": ((9, 1024), (12, 1024)),
        "camera_head.pose_branch.fc2.bias": ((9,), (12,))}
    reasons = {k: len(v) for k, v in s.skipped_by_reason().items()}
    assert reasons == {"config.dual_stream is off": 364,
                       "config.learnable_mask_fusion is off (fixed a = b = 1)": 2,
                       next(k for k in reasons if k.startswith("seed's second mask head")): 6}
    assert sorted(r.missing) == sorted(mism)


def test_seed_full_size_dual_config(state_dict_refs):
    m = meta(dual_stream=True, learnable_mask_fusion=True)
    r = load_weights(m, seed_checkpoint=state_dict_refs / SEED)
    assert counts(r, "seed") == {"loaded": 2167, "skipped": 6, "mismatched": 4,
                                 "unexpected": 0, "alias": 1224}
    assert len(r.missing) == 4 and r.stage3 == []
    # together with PAGE-4D (stage 2, before the seed) nothing is missing
    r = load_weights(m, checkpoint=state_dict_refs / "page4d.json",
                     seed_checkpoint=state_dict_refs / SEED, strict=True)
    prov = r.provenance
    assert prov["camera_head.embed_pose.weight"] == "checkpoint"
    assert prov["aggregator.frame_blocks.0.attn.qkv.weight"] == "seed"
    assert prov["aggregator.pose_frame_blocks.0.attn.qkv.weight"] == "seed"


def test_stage3_full_size(state_dict_refs):
    m = meta(dual_stream=True, sparse_global=True, sparse_strategy="memory_bank",
             learnable_mask_fusion=True)
    r = load_weights(m, checkpoint=state_dict_refs / "page4d.json", strict=True)
    assert counts(r, "checkpoint")["loaded"] == 1805
    copies = {s.target: s.origin for s in r.stage3 if s.action == "copy"}
    inits = sorted(s.target for s in r.stage3 if s.action == "init")
    assert len(copies) == 4 * 5 * BLOCK + 2 * BLOCK
    assert copies["aggregator.pose_frame_blocks.0.attn.qkv.weight"] == \
        "aggregator.frame_blocks.8.attn.qkv.weight"
    assert copies["aggregator.geo_global_blocks.4.mlp.fc2.bias"] == \
        "aggregator.global_blocks.12.mlp.fc2.bias"
    assert copies["aggregator.sparse_blocks.1.ls1.gamma"] == "aggregator.global_blocks.23.ls1.gamma"
    assert inits == sorted(["aggregator.lambda_pose_logit", "aggregator.lambda_geo_logit",
                            "aggregator.lambda_pose_t_logit", "aggregator.lambda_geo_t_logit",
                            "aggregator.memory_tokens", "aggregator.dynamic_mask_head.alpha",
                            "aggregator.dynamic_mask_head.beta"])
    assert r.missing == []
    table = r.as_table()
    assert "aggregator.pose_frame_blocks.0 <- copy of aggregator.frame_blocks.8" in table
    # VGGT-1B has no mask head: still copied blocks, only the head is missing
    r = load_weights(m, checkpoint=state_dict_refs / "vggt_1b.json")
    assert len(r.missing) == 8


def test_wrong_slot_is_refused(state_dict_refs):
    with pytest.raises(CheckpointError, match=r"pi3\.json.*pass it as pi3="):
        load_weights(meta(), checkpoint=state_dict_refs / "pi3.json")
    with pytest.raises(CheckpointError, match="seed_checkpoint="):
        load_weights(meta(), checkpoint=state_dict_refs / SEED)


def test_inspect_manifest(state_dict_refs):
    ins = inspect_checkpoint(state_dict_refs / "vggt_1b.json", config="vggt_mv_1b")
    d = ins.to_dict()
    assert (d["kind"], d["num_tensors"]) == ("vggt", 1797)
    assert d["prefixes"]["aggregator.frame_blocks"] == 432
    assert d["match"]["loaded"] == 1797 and d["match"]["missing"] == 8
    assert "aggregator.patch_embed" in ins.as_table()


# ============================================================================ (b) tiny, real
def tiny(seed: int = 0, **opts) -> VGGTMV:
    torch.manual_seed(seed)
    return VGGTMV(tiny_config(**opts))


def rand_sd(model: VGGTMV, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def snapshot(model: VGGTMV) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_page4d_style_pt_end_to_end(tmp_path):
    model = tiny()
    sd = rand_sd(model)
    n = len(sd)
    sd["aggregator.bogus.weight"] = torch.randn(3)
    sd["camera_head.empty_pose_tokens"] = torch.randn(1, 1, 12)  # wrong shape
    path = tmp_path / "checkpoint_150.pt"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 150}, path)

    before = snapshot(model)
    with pytest.raises(LoadError, match="camera_head.empty_pose_tokens"):
        load_weights(model, checkpoint=path, strict=True)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "strict must not copy"

    r = load_weights(model, checkpoint=path)
    s = r.source("checkpoint")
    assert s.kind == "page4d" and s.format == "torch-zip"
    assert s.counts == {"loaded": n - 1, "skipped": 0, "mismatched": 1, "unexpected": 1,
                        "alias": 0}
    assert s.tensors_read == n - 1
    assert s.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert any("'module.'" in note for note in s.notes)
    assert r.missing == ["camera_head.empty_pose_tokens"]
    got = model.state_dict()
    for k in got:
        if k == "camera_head.empty_pose_tokens":
            assert torch.equal(got[k], before[k])
        else:
            assert torch.equal(got[k], sd[k]), k
    assert all(p.is_leaf and p.requires_grad for p in model.parameters())
    table = r.as_table()
    assert "unexpected aggregator.bogus.weight" in table
    assert "expected [1, 1, 9], got [1, 1, 12]" in table
    d = json.loads(json.dumps(r.to_dict()))  # manifests need plain JSON
    assert d["sources"][0]["counts"]["loaded"] == n - 1 and d["missing"] == r.missing


def test_loading_keeps_parameter_storage(tmp_path):
    model = tiny()
    ptrs = {k: p.data_ptr() for k, p in model.named_parameters()}
    path = tmp_path / "m.safetensors"
    sd = rand_sd(model)
    save_file({"module." + k: v for k, v in sd.items()}, str(path))
    r = load_weights(model, checkpoint=path, strict=True)
    assert r.source("checkpoint").format == "safetensors" and r.missing == []
    assert {k: p.data_ptr() for k, p in model.named_parameters()} == ptrs
    got = model.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)  # 'module.' stripped, values landed


def test_legacy_pt_and_sniffed_formats(tmp_path):
    model = tiny()
    sd = rand_sd(model, seed=11)
    legacy = tmp_path / "old.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    r = load_weights(model, checkpoint=legacy, strict=True)
    assert r.source("checkpoint").format == "torch-legacy"
    assert torch.equal(model.aggregator.camera_token, sd["aggregator.camera_token"])
    # the format comes from the bytes when the name does not tell
    st = tmp_path / "weights.bin"
    save_file(rand_sd(model, seed=12), str(st))
    assert open_checkpoint(st).format == "safetensors"


def test_safetensors_bf16_cast_and_inspect(tmp_path):
    model = tiny()
    sd = {k: v.to(torch.bfloat16) for k, v in rand_sd(model).items()}
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path))
    load_weights(model, checkpoint=path, strict=True)
    got = model.state_dict()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], sd[k].float()) for k in sd)

    ins = inspect_checkpoint(path, config=tiny_config(), hash_file=True)
    assert ins.kind == "page4d" and ins.num_tensors == len(sd)
    assert ins.dtypes == {"bfloat16": len(sd)}
    assert ins.num_params == sum(v.numel() for v in sd.values())
    assert ins.prefixes["aggregator.frame_blocks"] == 4 * BLOCK
    assert ins.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ins.match.sources[0].counts["loaded"] == len(sd) and ins.match.missing == []


def pi3_style(model: VGGTMV, seed: int = 2) -> dict[str, torch.Tensor]:
    """A Pi3-layout file built from a tiny VGGT_MV's shapes, with the oddities of Pi3."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    C = cfg.embed_dim
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("aggregator.patch_embed.") and not k.endswith("mask_token"):
            sd["encoder." + k[len("aggregator.patch_embed."):]] = torch.randn(v.shape, generator=g)
    for i in range(cfg.depth + 1):  # one decoder pair deeper than the model
        for j in (2 * i, 2 * i + 1):
            for k, v in model.aggregator.frame_blocks[0].state_dict().items():
                sd[f"decoder.{j}.{k}"] = torch.randn(v.shape, generator=g)
    sd["register_token"] = torch.randn(1, 1, 5, C, generator=g)
    sd["image_mean"] = torch.randn(1, 3, 1, 1, generator=g)
    sd["image_std"] = torch.randn(1, 3, 1, 1, generator=g)
    # Pi3's camera head; a name and shape VGGT's camera head also has must still not land
    sd["camera_head.empty_pose_tokens"] = torch.randn(1, 1, 9, generator=g)
    sd["point_decoder.projects.weight"] = torch.randn(C, 2 * C, generator=g)
    sd["some_new_thing.weight"] = torch.randn(2, generator=g)
    sd["decoder.2.mlp.fc1.weight"] = torch.randn(7, C, generator=g)  # wrong shape
    return sd


def test_pi3_then_page4d_order_tiny(tmp_path):
    model = tiny()
    depth = model.config.depth
    p = pi3_style(model)
    pi3_path = tmp_path / "model.safetensors"
    save_file(p, str(pi3_path))
    before = snapshot(model)

    r = load_weights(model, pi3=pi3_path)
    s = r.source("pi3")
    n_enc = sum(1 for k in p if k.startswith("encoder."))
    assert s.counts == {"loaded": n_enc + 2 * depth * BLOCK - 1 + 1, "skipped": 2 + 2 + 2 * BLOCK,
                        "mismatched": 1, "unexpected": 1, "alias": 0}
    assert [e.source for e in s.by_status("unexpected")] == ["some_new_thing.weight"]
    got = model.state_dict()
    for i in range(depth):
        for k in model.aggregator.frame_blocks[i].state_dict():
            if not (i == 1 and k == "mlp.fc1.weight"):
                assert torch.equal(got[f"aggregator.frame_blocks.{i}.{k}"],
                                   p[f"decoder.{2 * i}.{k}"])
            assert torch.equal(got[f"aggregator.global_blocks.{i}.{k}"],
                               p[f"decoder.{2 * i + 1}.{k}"])
    assert torch.equal(got["aggregator.frame_blocks.1.mlp.fc1.weight"],
                       before["aggregator.frame_blocks.1.mlp.fc1.weight"])
    for k in p:
        if k.startswith("encoder."):
            assert torch.equal(got["aggregator.patch_embed." + k[8:]], p[k])
    reg = got["aggregator.register_token"]
    assert torch.equal(reg[:, 0], p["register_token"][:, 0, :4])
    assert torch.equal(reg[:, 1], p["register_token"][:, 0, :4])
    assert torch.equal(got["camera_head.empty_pose_tokens"],
                       before["camera_head.empty_pose_tokens"])
    assert torch.equal(got["aggregator.patch_embed.mask_token"],
                       before["aggregator.patch_embed.mask_token"])

    # stage 2 overrides stage 1 where both have a tensor; frame_blocks.0 only in Pi3
    page = rand_sd(model, seed=3)
    page = {k: v for k, v in page.items() if not k.startswith("aggregator.frame_blocks.0.")}
    ck_path = tmp_path / "page4d.pt"
    torch.save(page, ck_path)
    model2 = tiny(seed=5)
    r = load_weights(model2, pi3=pi3_path, checkpoint=ck_path, strict=True)
    got = model2.state_dict()
    assert torch.equal(got["aggregator.frame_blocks.1.attn.qkv.weight"],
                       page["aggregator.frame_blocks.1.attn.qkv.weight"])
    assert torch.equal(got["aggregator.frame_blocks.0.attn.qkv.weight"],
                       p["decoder.0.attn.qkv.weight"])
    assert torch.equal(got["aggregator.register_token"], page["aggregator.register_token"])
    assert r.history["aggregator.frame_blocks.1.attn.qkv.weight"] == ["pi3", "checkpoint"]
    assert r.provenance["aggregator.frame_blocks.0.attn.qkv.weight"] == "pi3"
    assert r.provenance["aggregator.patch_embed.mask_token"] == "checkpoint"


def seed_style(model: VGGTMV, seed: int = 4) -> dict[str, torch.Tensor]:
    """The prototype's layout: time/view names plus the VGGT names as aliases of the same
    tensors, lambdas, fusion gates, its extra mask head, a 12-d camera pose encoding."""
    sd = rand_sd(model, seed)
    out = {}
    renames = {"frame_blocks": "time_blocks", "global_blocks": "view_blocks",
               "pose_frame_blocks": "pose_time_blocks", "pose_global_blocks": "pose_view_blocks",
               "geo_frame_blocks": "geo_time_blocks", "geo_global_blocks": "geo_view_blocks"}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "aggregator" and parts[1] in renames:
            out[".".join(["aggregator", renames[parts[1]]] + parts[2:])] = v
        out[k] = v  # the alias shares the tensor, as the prototype's module aliases do
    C = model.config.embed_dim
    out["aggregator.dynamic_mask_head.mask_head.0.weight"] = torch.randn(C, 1, 3, 3)
    out["camera_head.empty_pose_tokens"] = torch.randn(1, 1, 12)
    out["aggregator.bogus_thing"] = torch.randn(1)
    return out, sd


def test_seed_style_end_to_end(tmp_path):
    model = tiny(dual_stream=True, learnable_mask_fusion=True)
    cfg = model.config
    file_sd, values = seed_style(model)
    path = tmp_path / "seed.pt"
    torch.save({"state_dict": file_sd}, path)
    before = snapshot(model)
    r = load_weights(model, seed_checkpoint=path)
    s = r.source("seed")
    assert s.kind == "seed"
    n_dual = 4 * len(cfg.dual_stream_layers) * BLOCK
    n_alias = 2 * cfg.depth * BLOCK + n_dual
    assert s.counts == {"loaded": len(values) - 1, "skipped": 1, "mismatched": 1,
                        "unexpected": 1, "alias": n_alias}
    assert s.tensors_read == len(values) - 1  # each aliased tensor read once
    got = model.state_dict()
    for k, v in values.items():
        if k == "camera_head.empty_pose_tokens":
            assert torch.equal(got[k], before[k])
        else:
            assert torch.equal(got[k], v), k
    assert r.missing == ["camera_head.empty_pose_tokens"] and r.stage3 == []
    assert not [n for n in s.notes if "alias keys hold values different" in n]

    # an alias that drifted from its primary is reported; the primary's value is loaded
    file_sd["aggregator.global_blocks.1.norm1.bias"] = torch.randn(cfg.embed_dim)
    torch.save(file_sd, path)
    r = load_weights(model, seed_checkpoint=path)
    assert [n for n in r.source("seed").notes if "1 alias keys hold values different" in n]
    assert torch.equal(model.aggregator.global_blocks[1].norm1.bias,
                       file_sd["aggregator.view_blocks.1.norm1.bias"])

    # the same file into a model without dual streams / fusion: skipped, with reasons
    plain = tiny()
    r = load_weights(plain, seed_checkpoint=path)
    reasons = {k: len(v) for k, v in r.source("seed").skipped_by_reason().items()}
    assert reasons["config.dual_stream is off"] == n_dual + 4
    assert reasons["config.learnable_mask_fusion is off (fixed a = b = 1)"] == 2


def test_stage3_copies_and_inits(tmp_path):
    model = tiny(dual_stream=True, sparse_global=True, sparse_strategy="memory_bank",
                 learnable_mask_fusion=True)
    cfg = model.config
    with torch.no_grad():
        for name in ("lambda_pose_logit", "lambda_geo_logit", "lambda_pose_t_logit",
                     "lambda_geo_t_logit"):
            getattr(model.aggregator, name).fill_(0.5)
    mem_before = model.aggregator.memory_tokens.detach().clone()
    page = rand_sd(tiny())  # a PAGE-4D layout: none of the new modules
    path = tmp_path / "page4d.pt"
    torch.save({"model": page}, path)
    r = load_weights(model, checkpoint=path, strict=True)
    agg = model.aggregator
    for j, layer in enumerate(cfg.dual_stream_layers):
        for stream in ("pose", "geo"):
            for slot, main in (("frame", agg.frame_blocks), ("global", agg.global_blocks)):
                blk = getattr(agg, f"{stream}_{slot}_blocks")[j]
                for k, v in blk.state_dict().items():
                    assert torch.equal(v, main[layer].state_dict()[k])
                    assert torch.equal(v, page[f"aggregator.{slot}_blocks.{layer}.{k}"])
    for j, layer in enumerate(cfg.sparse_layers):
        for k, v in agg.sparse_blocks[j].state_dict().items():
            assert torch.equal(v, page[f"aggregator.global_blocks.{layer}.{k}"])
    for name in ("lambda_pose_logit", "lambda_geo_logit", "lambda_pose_t_logit",
                 "lambda_geo_t_logit"):
        assert getattr(agg, name).item() == 0.0
    assert torch.equal(agg.memory_tokens, mem_before)
    assert agg.dynamic_mask_head.alpha.item() == 1.0
    n_copy = (4 * len(cfg.dual_stream_layers) + len(cfg.sparse_layers)) * BLOCK
    assert sum(s.action == "copy" for s in r.stage3) == n_copy
    assert r.missing == []
    # copies are independent tensors, not views of the main blocks
    assert agg.pose_frame_blocks[0].norm1.weight.data_ptr() != \
        agg.frame_blocks[cfg.dual_stream_layers[0]].norm1.weight.data_ptr()


def test_stage3_respects_provided_and_unloaded(tmp_path):
    model = tiny(dual_stream=True)
    cfg = model.config
    own = rand_sd(model, seed=7)  # a VGGT_MV checkpoint that holds its dual streams
    path = tmp_path / "own.pt"
    torch.save(own, path)
    r = load_weights(model, checkpoint=path, strict=True)
    assert r.source("checkpoint").kind == "vggt_mv"
    assert r.stage3 == []  # everything new was in the file: nothing copied or re-initialized
    assert torch.equal(model.aggregator.pose_frame_blocks[0].attn.qkv.weight,
                       own["aggregator.pose_frame_blocks.0.attn.qkv.weight"])
    assert model.aggregator.lambda_geo_logit.item() == own["aggregator.lambda_geo_logit"].item()

    # the main block of the last dual layer is absent: its copies stay missing
    last = cfg.dual_stream_layers[-1]
    part = {k: v for k, v in rand_sd(tiny()).items()
            if not k.startswith(f"aggregator.frame_blocks.{last}.")}
    path2 = tmp_path / "part.pt"
    torch.save(part, path2)
    r = load_weights(tiny(dual_stream=True), checkpoint=path2)
    j = len(cfg.dual_stream_layers) - 1
    assert by_group(r.missing) == {"aggregator.frame_blocks": BLOCK,
                                   "aggregator.pose_frame_blocks": BLOCK,
                                   "aggregator.geo_frame_blocks": BLOCK}
    assert f"aggregator.pose_frame_blocks.{j}.attn.qkv.weight" in r.missing


def test_meta_model_is_a_dry_run(tmp_path):
    src = tiny()
    path = tmp_path / "m.pt"
    torch.save(rand_sd(src), path)
    with torch.device("meta"):
        m = VGGTMV(tiny_config())
    r = load_weights(m, checkpoint=path, hash_files=False)
    assert r.dry_run and r.source("checkpoint").tensors_read == 0
    assert r.source("checkpoint").counts["loaded"] == len(src.state_dict())
    assert r.source("checkpoint").sha256 is None


def test_in_memory_state_dict_and_manifest_guard(state_dict_refs):
    model = tiny()
    sd = rand_sd(model)
    r = load_weights(model, checkpoint={"model": sd}, strict=True, hash_files=False)
    assert torch.equal(model.aggregator.camera_token, sd["aggregator.camera_token"])
    with pytest.raises(CheckpointError, match="manifest"):
        load_weights(model, checkpoint=state_dict_refs / "page4d.json")


def test_map_name_rules():
    assert map_name("pi3", "decoder.7.attn.qkv.weight")[0] == \
        "aggregator.global_blocks.3.attn.qkv.weight"
    assert map_name("pi3", "decoder.6.norm1.bias")[0] == "aggregator.frame_blocks.3.norm1.bias"
    assert map_name("pi3", "camera_head.fc_t.weight")[0] is None
    assert map_name("seed", "aggregator.geo_view_blocks.2.ls1.gamma")[0] == \
        "aggregator.geo_global_blocks.2.ls1.gamma"
    assert map_name("seed", "aggregator.lambda_pose_t_logit")[0] == "aggregator.lambda_pose_t_logit"
    assert map_name("page4d", "track_head.x")[0] == "track_head.x"


# ============================================================================ (c) bad files
class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Lambda:
    def __reduce__(self):
        return (eval, ("lambda: 0",))


def _good_pt(path):
    torch.save({"model": {"aggregator.camera_token": torch.randn(1, 2, 1, 64)}}, path)
    return path.read_bytes()


def _make(kind, tmp_path):
    p = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        data = _good_pt(tmp_path / "g.pt")
        p.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        p.write_bytes(os.urandom(4096).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "os_system":
        torch.save({"model": {"a": torch.zeros(2)}, "hook": _System(tmp_path / "pwned")}, p)
    elif kind == "lambda":
        p.write_bytes(pickle.dumps({"model": _Lambda()}, protocol=2))
    elif kind == "namespace_args":
        # what training scripts often store beside the weights; still not a plain container
        import argparse
        torch.save({"model": {"a": torch.zeros(2)}, "args": argparse.Namespace(lr=1)}, p)
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "args": [1, 2]}, p)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], p)
    elif kind == "bad_header":
        p = tmp_path / "bad.safetensors"
        save_file({"a": torch.zeros(4)}, str(p))
        data = bytearray(p.read_bytes())
        data[9:14] = b"\x00\x01oops"
        p.write_bytes(bytes(data))
    elif kind == "truncated_safetensors":
        p = tmp_path / "cut.safetensors"
        save_file({"a": torch.zeros(64)}, str(p))
        p.write_bytes(p.read_bytes()[:-32])
    elif kind == "huge_header":
        p = tmp_path / "huge.safetensors"
        p.write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    elif kind == "missing":
        p = tmp_path / "nowhere" / "model.pt"
    elif kind == "directory":
        p = tmp_path / "adir"
        p.mkdir()
    return p


BAD = {
    "truncated": "truncated or corrupt",
    "random": "not a PyTorch checkpoint",
    "empty": "empty file",
    "os_system": r"refused.*posix\.system.*refused on purpose",
    "lambda": r"refused.*eval.*refused on purpose",
    "namespace_args": r"refused.*argparse\.Namespace.*re-save just its state dict",
    "no_tensors": "contains no tensors",
    "not_a_dict": "not a state dict",
    "bad_header": "not a valid safetensors file",
    "truncated_safetensors": "not a valid safetensors file",
    "huge_header": "not a valid safetensors file",
    "missing": "no such file",
    "directory": "is a directory",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_files_raise_checkpoint_error(kind, tmp_path):
    p = _make(kind, tmp_path)
    with pytest.raises(CheckpointError, match=BAD[kind]) as ei:
        open_checkpoint(p)
    assert str(p) in str(ei.value)
    err = ei.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert not (tmp_path / "pwned").exists()


def test_bad_file_through_load_weights_leaves_model_alone(tmp_path):
    model = tiny()
    before = snapshot(model)
    p = _make("truncated", tmp_path)
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(model, pi3=None, checkpoint=p)
    with pytest.raises(CheckpointError, match="none of its 1 tensor names"):
        load_weights(model, checkpoint={"foo.weight": torch.zeros(1)})
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="at least one"):
        load_weights(model)
