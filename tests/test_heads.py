"""Prediction heads: checkpoint names/shapes, tiny-config shapes and maths, export hygiene."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vggt_mv.heads import (CameraHead, DPTHead, TrackHead, activate_head, activate_pose,
                           extri_intri_to_pose_encoding, inverse_log_transform, mat_to_quat,
                           pose_encoding_to_extri_intri, quat_to_mat)
from vggt_mv.heads.pos_embed import sampled_grid_embed
from vggt_mv.layers import count_sites

DIM, PSI = 128, 5
DPT_TINY = dict(dim_in=DIM, features=32, out_channels=(16, 32, 64, 64),
                intermediate_layer_idx=(1, 2, 4, 5))
TRACK_TINY = dict(dim_in=DIM, features=16, hidden_size=32, depth=1, num_heads=2,
                  num_virtual_tracks=4, corr_levels=3, out_channels=(16, 32, 64, 64),
                  intermediate_layer_idx=(1, 2, 4, 5))


def token_list(B, S, H, W, used=(1, 2, 4, 5), depth=6, seed=0):
    """Aggregator-like list: tensors only where a head reads, None elsewhere."""
    g = torch.Generator().manual_seed(seed)
    n = PSI + (H // 14) * (W // 14)
    return [torch.randn(B, S, n, DIM, generator=g) if i in used else None for i in range(depth)]


def tiny_camera():
    return CameraHead(dim_in=DIM, trunk_depth=1, num_heads=4).eval()


# ----------------------------------------------------------------------------- checkpoints
FULL_HEADS = {
    "camera_head": lambda: CameraHead(),
    "depth_head": lambda: DPTHead(output_dim=2, activation="exp"),
    "point_head": lambda: DPTHead(output_dim=4, activation="inv_log"),
    "track_head": lambda: TrackHead(),
}


@pytest.mark.parametrize("prefix", sorted(FULL_HEADS))
def test_full_size_state_dict_matches_page4d(prefix, state_dict_refs):
    ref = json.loads((state_dict_refs / "page4d.json").read_text())["tensors"]
    want = {k[len(prefix) + 1:]: list(v) for k, v in ref.items() if k.startswith(prefix + ".")}
    with torch.device("meta"):
        head = FULL_HEADS[prefix]()
    got = {k: list(v.shape) for k, v in head.state_dict().items()}
    assert sorted(got) == sorted(want)
    assert got == want


# ----------------------------------------------------------------------------- activations
def test_activation_maths():
    x = torch.linspace(-3, 3, 61)
    y = inverse_log_transform(x)
    assert torch.allclose(y, torch.sign(x) * (torch.exp(x.abs()) - 1), atol=1e-5)
    # inv_log undoes the signed log1p compression the point head was trained on.
    assert torch.allclose(inverse_log_transform(torch.sign(y) * torch.log1p(y.abs())), y,
                          rtol=1e-5, atol=1e-5)

    out = torch.randn(2, 4, 5, 6)
    pts, conf = activate_head(out, "inv_log", "expp1")
    assert pts.shape == (2, 5, 6, 3) and conf.shape == (2, 5, 6)
    assert torch.allclose(pts, inverse_log_transform(out[:, :3].permute(0, 2, 3, 1)))
    assert torch.allclose(conf, 1 + torch.exp(out[:, 3]))
    depth, dconf = activate_head(out[:, :2], "exp", "expp1")
    assert torch.allclose(depth[..., 0], torch.exp(out[:, 0]))
    assert (dconf > 1).all()

    enc = torch.randn(3, 9)
    act = activate_pose(enc, "linear", "linear", "relu")
    assert torch.equal(act[:, :7], enc[:, :7]) and torch.equal(act[:, 7:], enc[:, 7:].clamp(min=0))


# ----------------------------------------------------------------------------- pose encoding
def random_rotations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = quat_to_mat(torch.randn(n, 4, generator=g))
    # 180-degree turns and identity: the branches where one quaternion entry vanishes.
    special = torch.diag_embed(torch.tensor([[1., -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1]]))
    return torch.cat([R, special])


def test_quaternion_matrix_round_trip():
    R = random_rotations(300)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    q = mat_to_quat(R)
    assert q.dtype == torch.float32
    assert (q[..., 3] >= 0).all()
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q)), atol=1e-5)
    assert torch.allclose(quat_to_mat(q), R, atol=1e-5)


def test_pose_encoding_round_trip():
    H, W = 378, 518
    g = torch.Generator().manual_seed(1)
    R = random_rotations(40).reshape(2, 22, 3, 3)
    t = torch.randn(2, 22, 3, generator=g)
    extri = torch.cat([R, t[..., None]], dim=-1)
    fx = 200 + 400 * torch.rand(2, 22, generator=g)
    fy = 200 + 400 * torch.rand(2, 22, generator=g)
    intri = torch.zeros(2, 22, 3, 3)
    intri[..., 0, 0], intri[..., 1, 1] = fx, fy
    intri[..., 0, 2], intri[..., 1, 2], intri[..., 2, 2] = W / 2, H / 2, 1

    enc = extri_intri_to_pose_encoding(extri, intri, (H, W))
    assert enc.shape == (2, 22, 9) and enc.dtype == torch.float32
    assert torch.allclose(enc[..., 7], 2 * torch.atan(H / 2 / fy))
    assert torch.allclose(enc[..., 8], 2 * torch.atan(W / 2 / fx))
    extri2, intri2 = pose_encoding_to_extri_intri(enc, (H, W))
    assert torch.allclose(extri2, extri, atol=1e-5)
    assert torch.allclose(intri2, intri, rtol=1e-4, atol=1e-3)
    assert torch.allclose(extri_intri_to_pose_encoding(extri2, intri2, (H, W)), enc, atol=1e-5)
    assert pose_encoding_to_extri_intri(enc, build_intrinsics=False)[1] is None


# ----------------------------------------------------------------------------- camera head
def test_camera_head_iterations():
    torch.manual_seed(0)
    head = tiny_camera()
    tokens = [None, None, None, token_list(2, 3, 28, 42, used=(0,), depth=1)[0]]
    with torch.no_grad():
        preds = head(tokens, num_iterations=4)
        assert len(preds) == 4 and all(p.shape == (2, 3, 9) for p in preds)
        assert len(head(tokens, num_iterations=2)) == 2
        assert (preds[-1][..., 7:] >= 0).all()  # fl_act relu keeps the FoV non-negative
        # Later iterations refine the first estimate rather than repeat it.
        assert not torch.allclose(preds[0], preds[1])

        # Iteration 0 is conditioned on the learned empty pose, and only on it.
        head.empty_pose_tokens.add_(0.5)
        moved = head(tokens, num_iterations=4)
        assert not torch.allclose(moved[0], preds[0])
        head.empty_pose_tokens.sub_(0.5)

        # Only the camera token (index 0) of the last layer matters.
        poked = [None, None, None, tokens[-1].clone()]
        poked[-1][:, :, 1:] += 1.0
        assert torch.allclose(head(poked)[-1], preds[-1])


# ----------------------------------------------------------------------------- DPT heads
def test_dpt_heads_shapes():
    B, S, H, W = 2, 2, 42, 56
    tokens = token_list(B, S, H, W)
    images = torch.rand(B, S, 3, H, W)
    with torch.no_grad():
        depth, dconf = DPTHead(output_dim=2, activation="exp", **DPT_TINY).eval()(
            tokens, images, PSI)
        pts, pconf = DPTHead(output_dim=4, activation="inv_log", **DPT_TINY).eval()(
            tokens, images, PSI)
        feats = DPTHead(feature_only=True, down_ratio=2, pos_embed=False, **DPT_TINY).eval()(
            tokens, images, PSI)
    assert depth.shape == (B, S, H, W, 1) and dconf.shape == (B, S, H, W)
    assert pts.shape == (B, S, H, W, 3) and pconf.shape == (B, S, H, W)
    assert (depth > 0).all() and (dconf > 1).all() and (pconf > 1).all()
    assert feats.shape == (B, S, 32, H // 2, W // 2)


def test_dpt_frames_are_independent():
    """All frames in one pass must equal frame-by-frame runs (no cross-frame mixing)."""
    B, S, H, W = 1, 3, 28, 42
    head = DPTHead(output_dim=2, activation="exp", **DPT_TINY).eval()
    tokens = token_list(B, S, H, W)
    images = torch.rand(B, S, 3, H, W)
    with torch.no_grad():
        depth, _ = head(tokens, images, PSI)
        for s in range(S):
            one = [t[:, s:s + 1] if t is not None else None for t in tokens]
            d1, _ = head(one, images[:, s:s + 1], PSI)
            assert torch.allclose(d1[:, 0], depth[:, s], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- track head
def test_track_head_shapes_and_pinned_query():
    torch.manual_seed(0)
    B, S, H, W, Q = 2, 3, 56, 42, 5
    head = TrackHead(**TRACK_TINY).eval()
    tokens = token_list(B, S, H, W)
    query = torch.rand(B, Q, 2) * torch.tensor([W - 1.0, H - 1.0])
    with count_sites() as sites, torch.no_grad():
        tracks, vis, conf = head(tokens, torch.rand(B, S, 3, H, W), PSI, query, iters=3)
    assert len(tracks) == 3 and all(t.shape == (B, S, Q, 2) for t in tracks)
    assert vis.shape == conf.shape == (B, S, Q)
    assert ((vis > 0) & (vis < 1)).all() and ((conf > 0) & (conf < 1)).all()
    assert torch.allclose(tracks[-1][:, 0], query, atol=1e-5)
    # 3 iterations x (1 time + 3 space) blocks, each one attention plugin site.
    assert sites["biased_attention"] == 3 * 4

    with pytest.raises(ValueError, match="too small"):
        TrackHead(**{**TRACK_TINY, "corr_levels": 7})(tokens, torch.rand(B, S, 3, H, W), PSI,
                                                      query)


def test_windowed_correlation_equals_dense_volume():
    """Sampling features then dotting == sampling the full correlation volume (upstream)."""
    torch.manual_seed(0)
    tracker = TrackHead(**TRACK_TINY).tracker
    B, S, N, C, h, w, r = 1, 2, 4, 16, 20, 24, tracker.corr_radius
    fmap = torch.randn(B * S, C, h, w)
    pyramid = [fmap, F.avg_pool2d(fmap, 2, 2)]
    targets = torch.randn(B, S, N, C)
    coords = torch.rand(B, S, N, 2) * torch.tensor([w + 4.0, h + 4.0]) - 2
    got = tracker._correlations(pyramid, targets, coords)

    ref = []
    lin = torch.linspace(-r, r, 2 * r + 1)
    for lvl, fm in enumerate(pyramid):
        hh, ww = fm.shape[-2:]
        vol = torch.einsum("bnc,bchw->bnhw", targets.reshape(B * S, N, C), fm) / math.sqrt(C)
        cols = []
        for i in range(2 * r + 1):          # slow index: x offset
            for j in range(2 * r + 1):      # fast index: y offset
                p = coords.reshape(B * S, N, 2) / 2 ** lvl + torch.stack([lin[i], lin[j]])
                gx, gy = p[..., 0] * 2 / (ww - 1) - 1, p[..., 1] * 2 / (hh - 1) - 1
                grid = torch.stack([gx, gy], -1).reshape(B * S * N, 1, 1, 2)
                cols.append(F.grid_sample(vol.reshape(B * S * N, 1, hh, ww), grid,
                                          align_corners=True, padding_mode="zeros").flatten())
        ref.append(torch.stack(cols, -1).reshape(B, S, N, -1))
    assert torch.allclose(got, torch.cat(ref, -1), atol=1e-4)


def test_sampled_grid_embed_equals_grid_sample():
    dim, h, w = 52, 9, 13
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))

    def emb(v):
        a = v[..., None] * freqs
        return torch.cat([a.sin(), a.cos()], -1)

    grid = torch.cat([emb(xs), emb(ys)], -1).permute(2, 0, 1)[None]   # [1, dim, h, w]
    pts = torch.rand(1, 30, 2) * torch.tensor([w + 3.0, h + 3.0]) - 1.5
    pts[0, 0] = torch.tensor([w - 1.0, h - 1.0])
    norm = torch.stack([pts[..., 0] * 2 / (w - 1) - 1, pts[..., 1] * 2 / (h - 1) - 1], -1)
    ref = F.grid_sample(grid, norm[:, :, None], align_corners=True, padding_mode="border")
    got = sampled_grid_embed(pts, dim, h, w)
    assert torch.allclose(got, ref[..., 0].transpose(1, 2), atol=1e-5)


# ----------------------------------------------------------------------------- export hygiene
class DtypeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.float64_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.float64_ops.append(str(func))
        return out


def test_no_float64_in_any_head():
    B, S, H, W = 1, 2, 56, 42
    tokens = token_list(B, S, H, W)
    images = torch.rand(B, S, 3, H, W)
    query = torch.rand(B, 3, 2) * 30
    rec = DtypeRecorder()
    with torch.no_grad(), rec:
        tiny_camera()(tokens)
        DPTHead(**DPT_TINY).eval()(tokens, images, PSI)
        TrackHead(**TRACK_TINY).eval()(tokens, images, PSI, query, iters=1)
        enc = extri_intri_to_pose_encoding(
            torch.eye(3, 4).expand(1, 2, 3, 4),
            torch.tensor([[300.0, 0, 21], [0, 300, 28], [0, 0, 1]]).expand(1, 2, 3, 3), (H, W))
        pose_encoding_to_extri_intri(enc, (H, W))
    assert rec.float64_ops == []


def test_torch_export_tiny_heads():
    B, S, H, W = 1, 2, 28, 42
    tokens = token_list(B, S, H, W)
    images = torch.rand(B, S, 3, H, W)
    cam_tokens = [None, None, tokens[5]]
    for head, args in ((tiny_camera(), (cam_tokens,)),
                       (DPTHead(**DPT_TINY).eval(), (tokens, images, PSI))):
        ep = torch.export.export(head, args, strict=False)
        with torch.no_grad():
            want, got = head(*args), ep.module()(*args)
        want = want[-1] if isinstance(want, list) else want[0]
        got = got[-1] if isinstance(got, list) else got[0]
        assert torch.allclose(want, got, rtol=1e-5, atol=1e-5)
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        # .item() would show up as _local_scalar_dense (a data-dependent scalar).
        assert not any("_local_scalar_dense" in t or "float64" in t for t in targets)
        for n in ep.graph.nodes:
            val = n.meta.get("val")
            assert not (isinstance(val, torch.Tensor) and val.dtype == torch.float64), n
