"""VGGTMV end to end: checkpoint layout, output shapes for every mode and option,
view-permutation equivariance, single-view compatibility, input errors."""
import json

import pytest
import torch

from vggt_mv.config import get_config, tiny_config
from vggt_mv.models import InputError, VGGTMV


def meta_state_shapes(cfg):
    with torch.device("meta"):
        model = VGGTMV(cfg)
    return {k: list(v.shape) for k, v in model.state_dict().items()}, model


@pytest.mark.parametrize("preset,manifest", [("vggt_mv_1b", "page4d.json"),
                                             ("vggt_1b", "vggt_1b.json")])
def test_checkpoint_layout_is_exact(state_dict_refs, preset, manifest):
    ref = json.loads((state_dict_refs / manifest).read_text())
    got, model = meta_state_shapes(get_config(preset))
    assert set(got) - set(ref["tensors"]) == set()
    assert set(ref["tensors"]) - set(got) == set()
    assert {k: got[k] for k in ref["tensors"]} == ref["tensors"]
    assert model.num_parameters() == ref["num_params"]


@pytest.mark.parametrize("option", [
    {"dual_stream": True}, {"sparse_global": True},
    {"sparse_global": True, "sparse_strategy": "memory_bank"},
    {"learnable_mask_fusion": True}, {"temporal_encoding": True},
])
def test_options_only_add_parameters(state_dict_refs, option):
    ref = json.loads((state_dict_refs / "page4d.json").read_text())["tensors"]
    got, _ = meta_state_shapes(get_config(**option))
    assert {k: got[k] for k in ref} == ref  # nothing renamed or reshaped
    added = set(got) - set(ref)
    assert bool(added) == (not option.get("temporal_encoding", False))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VGGTMV(tiny_config()).eval()


EXPECTED = {"pose_enc": (9,), "depth": ("H", "W", 1), "depth_conf": ("H", "W"),
            "world_points": ("H", "W", 3), "world_points_conf": ("H", "W")}


def check_shapes(out, lead, H, W):
    for k, tail in EXPECTED.items():
        want = lead + tuple(H if t == "H" else W if t == "W" else t for t in tail)
        assert tuple(out[k].shape) == want, k
        assert torch.isfinite(out[k]).all(), k


@pytest.mark.parametrize("option", [{}, {"dual_stream": True}, {"sparse_global": True},
                                    {"sparse_global": True, "sparse_strategy": "dilated"},
                                    {"sparse_global": True, "sparse_strategy": "memory_bank"},
                                    {"aa_order": ["view", "time"]}, {"temporal_encoding": True},
                                    {"mask_head": False}, {"learnable_mask_fusion": True},
                                    # seed prototype layout: dual layers straddle the mask layer
                                    {"dual_stream": True, "dual_stream_layers": [0, 1, 2]}])
def test_multiview_shapes_every_option(option):
    torch.manual_seed(0)
    model = VGGTMV(tiny_config(**option)).eval()
    B, T, N, H, W = 1, 3, 2, 42, 56
    with torch.no_grad():
        out = model(torch.rand(B, T, N, 3, H, W), ext_mask=torch.rand(B, T, N, H, W))
    check_shapes(out, (B, T, N), H, W)
    assert tuple(out["dynamic_mask"].shape) == (B, T, N, H // 14, W // 14)


def test_single_view_layout_and_tracks(tiny):
    B, S, H, W = 1, 3, 28, 42
    qp = torch.tensor([[[5.0, 7.0], [20.0, 10.0]]])
    with torch.no_grad():
        out = tiny(torch.rand(B, S, 3, H, W), query_points=qp)
    check_shapes(out, (B, S), H, W)
    assert tuple(out["track"].shape) == (B, S, 2, 2)
    assert tuple(out["vis"].shape) == (B, S, 2) and tuple(out["conf"].shape) == (B, S, 2)
    assert tuple(out["dynamic_mask"].shape) == (B, S, 2, 3)


def test_multiview_tracks(tiny):
    with torch.no_grad():
        out = tiny(torch.rand(1, 2, 2, 3, 28, 28), query_points=torch.rand(1, 3, 2) * 27)
    assert tuple(out["track"].shape) == (1, 2, 2, 3, 2)


def test_one_frame_is_the_same_in_both_layouts():
    """With a single frame, VGGT's frame/global attention and VGGT_MV's Time/View-SA all
    see the same tokens, so both input layouts must agree exactly (the general
    single-view semantics are checked against a loop reference in test_aggregator)."""
    torch.manual_seed(3)
    model = VGGTMV(tiny_config()).eval()
    x = torch.rand(1, 1, 3, 28, 28)
    with torch.no_grad():
        a = model(x)
        b = model(x[:, :, None])
    for k in EXPECTED:
        torch.testing.assert_close(a[k], b[k][:, :, 0], atol=1e-5, rtol=1e-5)


def test_permuting_views_permutes_outputs(tiny):
    """The reference view (view 0) is special; views 1..N-1 are exchangeable."""
    x = torch.rand(1, 2, 4, 3, 28, 42)
    perm = [0, 3, 1, 2]
    with torch.no_grad():
        a = tiny(x)
        b = tiny(x[:, :, perm])
    for k in list(EXPECTED) + ["dynamic_mask"]:
        torch.testing.assert_close(b[k], a[k][:, :, perm], atol=2e-4, rtol=2e-4)
    # and swapping the reference view does change things
    with torch.no_grad():
        c = tiny(x[:, :, [1, 0, 2, 3]])
    assert (c["pose_enc"] - a["pose_enc"][:, :, [1, 0, 2, 3]]).abs().max() > 1e-5


def test_attention_sites_counts_every_call(tiny):
    sites = tiny.attention_sites((1, 2, 2, 3, 28, 28))
    cfg = tiny.config
    # encoder blocks + 2 per trunk layer + camera trunk x iterations
    expected = cfg.encoder.depth + 2 * cfg.depth + \
        cfg.heads.camera_trunk_depth * cfg.heads.camera_iterations
    assert sites == {"biased_attention": expected, "sparse_attention": 0}
    sparse = VGGTMV(tiny_config(sparse_global=True)).attention_sites((1, 2, 2, 3, 28, 28))
    assert sparse["sparse_attention"] == 1
    dual = VGGTMV(tiny_config(dual_stream=True)).attention_sites((1, 2, 2, 3, 28, 28))
    assert dual["biased_attention"] == expected + 2 * len(tiny_config().dual_stream_layers)


def test_full_size_sites_on_meta():
    with torch.device("meta"):
        model = VGGTMV(get_config())
    sites = model.attention_sites((1, 8, 4, 3, 518, 518))
    assert sites == {"biased_attention": 24 + 48 + 16, "sparse_attention": 0}


@pytest.mark.parametrize("shape,msg", [
    ((1, 2, 2, 3, 30, 28), "multiple of the patch size"),
    ((1, 2, 2, 4, 28, 28), "3 \\(RGB\\)"),
    ((2, 28, 28), "must be"),
])
def test_bad_inputs_are_explained(tiny, shape, msg):
    with pytest.raises(InputError, match=msg):
        tiny(torch.rand(*shape))


def test_bad_mask_shape(tiny):
    with pytest.raises(InputError, match="ext_mask"):
        tiny(torch.rand(1, 2, 2, 3, 28, 28), ext_mask=torch.rand(1, 2, 2, 14, 14))


def test_no_float64_in_forward(tiny):
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = set()

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    seen.add(str(func))
            return out

    with torch.no_grad(), Spy():
        tiny(torch.rand(1, 2, 2, 3, 28, 28))
    assert not seen, f"float64 produced by {sorted(seen)}"


def test_tiny_forward_on_real_frames(tiny, mv_scene):
    """Real frames of the scene through the same preprocessing the runtime uses."""
    from runtime.preprocess import load_clip

    clip = load_clip(mv_scene, 0, 2, 4, (56, 70), with_masks=True)
    images = torch.from_numpy(clip["images"]).float()
    masks = torch.from_numpy(clip["ext_mask"]).float()
    assert images.shape == (1, 2, 4, 3, 56, 70) and 0.0 <= images.min() < images.max() <= 1.0
    with torch.no_grad():
        out = tiny(images, ext_mask=masks)
    check_shapes(out, (1, 2, 4), 56, 70)
    with torch.no_grad():
        no_mask = tiny(images)
    # the SAM2 masks move the fused dynamic mask where they cover the object
    assert (out["dynamic_mask"] - no_mask["dynamic_mask"]).abs().max() > 1e-3
