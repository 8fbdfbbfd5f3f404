"""Aggregator semantics against explicit, loop-built references (no shared reshapes)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from vggt_mv.config import tiny_config
from vggt_mv.layers.rope import patch_positions
from vggt_mv.models.aggregator import Aggregator

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def ref_block(blk, x, pos, bias=None, t=None):
    """Block maths with an explicit softmax over a materialized logit matrix."""
    a = blk.attn
    h = blk.norm1(x)
    B, L, C = h.shape
    q, k, v = a.qkv(h).reshape(B, L, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k = a.q_norm(q), a.k_norm(k)
    q, k = a.rope(q, pos, t), a.rope(k, pos, t)
    logits = q @ k.transpose(-1, -2) * a.scale
    if bias is not None:
        r, c = bias
        logits = logits + (r[:, :, None] * c[:, None, :])[:, None]
    o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C)
    x = x + blk.ls1(a.proj(o))
    return x + blk.ls2(blk.mlp(blk.norm2(x)))


def mask_bias(agg, patch_tokens, h, w):
    """PAGE-4D: c = -0.5 clamp(alpha * sigmoid(-logit / tau), 0, 1) on patch keys."""
    head = agg.spatial_mask_head
    G, P, C = patch_tokens.shape
    logit = head.head0(patch_tokens.transpose(1, 2).reshape(G, C, h, w)).reshape(G, P)
    suppress = torch.sigmoid(-logit / F.softplus(head.tau_logit))
    return -0.5 * (F.softplus(head.alpha_logit) * suppress).clamp(0, 1), suppress


def ref_multiview(agg, images, keep):
    """VGGT_MV by the design notes: Time-SA over each view's T frames, View-SA over each
    time step's N views, sequences assembled frame by frame with Python loops."""
    cfg = agg.cfg
    B, T, N, _, H, W = images.shape
    h, w = H // 14, W // 14
    S0 = 1 + cfg.num_register_tokens
    Fl = S0 + h * w
    x = (images.reshape(-1, 3, H, W) - MEAN) / STD
    patches = agg.patch_embed(x).reshape(B, T, N, h * w, -1)
    fr = {}
    for t in range(T):
        for n in range(N):
            idx = 0 if (t == 0 and n == 0) else 1
            special = torch.cat([agg.camera_token[:, idx], agg.register_token[:, idx]], 1)
            fr[t, n] = torch.cat([special.expand(B, -1, -1), patches[:, t, n]], 1)
    pos = patch_positions(h, w, S0)
    cbias = None
    outs = {}
    for layer in range(cfg.depth):
        # Time-SA: one sequence per view
        for n in range(N):
            seq = torch.cat([fr[t, n] for t in range(T)], 1)
            tt = torch.arange(T).float().repeat_interleave(Fl)
            seq = ref_block(agg.frame_blocks[layer], seq, pos.repeat(T, 1), t=tt)
            for t in range(T):
                fr[t, n] = seq[:, t * Fl:(t + 1) * Fl]
        frame_out = {k: v for k, v in fr.items()}
        if layer == cfg.mask_layer and cfg.mask_head:
            cbias = {}
            for (t, n), tok in fr.items():
                c, _ = mask_bias(agg, tok[:, S0:], h, w)
                cbias[t, n] = torch.cat([torch.zeros(B, S0), c], 1)
        # View-SA: one sequence per time step
        for t in range(T):
            seq = torch.cat([fr[t, n] for n in range(N)], 1)
            bias = None
            if cbias is not None and layer in cfg.mask_bias_layers:
                r = torch.cat([torch.cat([torch.ones(B, S0), torch.zeros(B, h * w)], 1)] * N, 1)
                c = torch.cat([cbias[t, n] for n in range(N)], 1)
                bias = (r, c)
            seq = ref_block(agg.global_blocks[layer], seq, pos.repeat(N, 1), bias)
            for n in range(N):
                fr[t, n] = seq[:, n * Fl:(n + 1) * Fl]
        if layer in keep:
            outs[layer] = torch.stack([torch.stack(
                [torch.cat([frame_out[t, n], fr[t, n]], -1) for n in range(N)], 1)
                for t in range(T)], 1)
    return outs


def ref_single_view(agg, images, keep):
    """VGGT / PAGE-4D: frame attention per frame, global attention over all S frames."""
    cfg = agg.cfg
    B, S, _, H, W = images.shape
    h, w = H // 14, W // 14
    S0 = 1 + cfg.num_register_tokens
    Fl = S0 + h * w
    x = (images.reshape(-1, 3, H, W) - MEAN) / STD
    patches = agg.patch_embed(x).reshape(B, S, h * w, -1)
    cam = torch.cat([agg.camera_token[:, :1].expand(B, 1, -1, -1),
                     agg.camera_token[:, 1:].expand(B, S - 1, -1, -1)], 1)
    reg = torch.cat([agg.register_token[:, :1].expand(B, 1, -1, -1),
                     agg.register_token[:, 1:].expand(B, S - 1, -1, -1)], 1)
    tokens = torch.cat([cam, reg, patches], 2).reshape(B * S, Fl, -1)
    pos = patch_positions(h, w, S0)
    c_all, outs = None, {}
    for layer in range(cfg.depth):
        tokens = ref_block(agg.frame_blocks[layer], tokens.reshape(B * S, Fl, -1), pos)
        frame_out = tokens.reshape(B, S, Fl, -1)
        if layer == cfg.mask_layer and cfg.mask_head:
            c, _ = mask_bias(agg, tokens[:, S0:], h, w)
            c_all = torch.cat([torch.zeros(B * S, S0), c], 1).reshape(B, S * Fl)
        bias = None
        if c_all is not None and layer in cfg.mask_bias_layers:
            r = torch.cat([torch.ones(S0), torch.zeros(h * w)]).repeat(S)[None].expand(B, -1)
            bias = (r, c_all)
        t_glob = torch.arange(S).float().repeat_interleave(Fl)
        tokens = ref_block(agg.global_blocks[layer], tokens.reshape(B, S * Fl, -1),
                           pos.repeat(S, 1), bias, t=t_glob)
        if layer in keep:
            outs[layer] = torch.cat([frame_out, tokens.reshape(B, S, Fl, -1)], -1)
    return outs


def randomize(module, seed=0):
    """LayerScale 0.01 and zero-init heads would hide mistakes; make every weight count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "logit" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "token" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


@pytest.fixture(scope="module")
def agg():
    torch.manual_seed(0)
    return randomize(Aggregator(tiny_config()).eval())


def test_multiview_matches_loop_reference(agg):
    images = torch.rand(1, 3, 2, 3, 42, 56)
    with torch.no_grad():
        got = agg(images, keep_layers=(0, 2, 3))["geo"]
        ref = ref_multiview(agg, images, keep=(0, 2, 3))
    for layer in (0, 2, 3):
        torch.testing.assert_close(got[layer], ref[layer], atol=1e-4, rtol=1e-4)


def test_single_view_is_vggt_frame_global(agg):
    images = torch.rand(2, 3, 3, 28, 42)
    with torch.no_grad():
        got = agg(images[:, :, None], single_view=True, keep_layers=(1, 3))["geo"]
        ref = ref_single_view(agg, images, keep=(1, 3))
    for layer in (1, 3):
        torch.testing.assert_close(got[layer][:, :, 0], ref[layer], atol=1e-4, rtol=1e-4)


def test_page4d_bias_changes_camera_tokens_only_through_bias(agg):
    """With the mask head on vs off the trunk differs after the mask layer (the bias is
    live), and identical before it."""
    images = torch.rand(1, 2, 2, 3, 28, 28)
    off = copy.deepcopy(agg)
    off.cfg = tiny_config(mask_head=False)
    with torch.no_grad():
        a = agg(images, keep_layers=(1, 3))["geo"]
        b = off(images, keep_layers=(1, 3))["geo"]
    torch.testing.assert_close(a[1], b[1])
    assert (a[3] - b[3]).abs().max() > 1e-4


def test_dual_stream_with_zero_lambdas_is_the_single_stream_model():
    torch.manual_seed(1)
    cfg_dual = tiny_config(dual_stream=True, mask_bias_layers=(3,), dual_stream_layers=(2,))
    dual = randomize(Aggregator(cfg_dual).eval(), 1)
    single = Aggregator(tiny_config(mask_bias_layers=(3,))).eval()
    single.load_state_dict(dual.state_dict(), strict=False)
    with torch.no_grad():
        for stream in ("pose", "geo"):
            getattr(dual, f"{stream}_frame_blocks")[0].load_state_dict(
                dual.frame_blocks[2].state_dict())
            getattr(dual, f"{stream}_global_blocks")[0].load_state_dict(
                dual.global_blocks[2].state_dict())
        for n in ("lambda_pose_logit", "lambda_geo_logit", "lambda_pose_t_logit",
                  "lambda_geo_t_logit"):
            getattr(dual, n).zero_()
    images = torch.rand(1, 2, 2, 3, 28, 42)
    with torch.no_grad():
        d = dual(images, keep_layers=(3,))
        s = single(images, keep_layers=(3,))
    torch.testing.assert_close(d["geo"][3], s["geo"][3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d["pose"][3], s["geo"][3], atol=1e-5, rtol=1e-5)
    # non-zero lambdas separate the streams: pose suppresses, geo amplifies dynamics
    with torch.no_grad():
        dual.lambda_pose_logit.fill_(9.0)  # clamped to 4
        dual.lambda_geo_logit.fill_(3.0)
        d2 = dual(images, keep_layers=(3,))
    assert (d2["pose"][3] - d2["geo"][3]).abs().max() > 1e-4


def test_lambda_clamp():
    a = Aggregator(tiny_config(dual_stream=True))
    with torch.no_grad():
        a.lambda_pose_logit.fill_(100.0)
    assert a._lambda("lambda_pose_logit").item() == 4.0


def test_external_mask_fusion_moves_the_mask(agg):
    images = torch.rand(1, 2, 2, 3, 28, 28)
    ones = torch.ones(1, 2, 2, 28, 28)
    with torch.no_grad():
        m0 = agg(images, keep_layers=())["dynamic_mask"]
        m1 = agg(images, ext_mask=ones, keep_layers=())["dynamic_mask"]
        mz = agg(images, ext_mask=torch.zeros_like(ones), keep_layers=())["dynamic_mask"]
    assert m0.shape == (1, 2, 2, 2, 2)
    assert (m1 > m0).all() and (mz < m0).all()


@pytest.mark.parametrize("strategy", ["landmark", "dilated", "memory_bank"])
def test_sparse_global_layers_run_and_matter(strategy):
    torch.manual_seed(2)
    agg = randomize(Aggregator(tiny_config(sparse_global=True, sparse_strategy=strategy)).eval())
    images = torch.rand(1, 3, 2, 3, 28, 28)
    from vggt_mv.layers.attention_ops import count_sites
    with torch.no_grad(), count_sites() as c:
        out = agg(images, keep_layers=(3,))["geo"][3]
    assert c["sparse_attention"] == 1 and torch.isfinite(out).all()
    with torch.no_grad():
        agg.sparse_blocks[0].ls1.gamma.zero_()
        agg.sparse_blocks[0].ls2.gamma.zero_()
        base = agg(images, keep_layers=(3,))["geo"][3]
    assert (out - base).abs().max() > 1e-4
