"""runtime/align.py on its own: the closed form, its degenerate cases, confidence weights,
the residual's independence of scale, and how the robust fit degrades as the share of
outliers grows (accurate, or flagged by its residual; the bound the streaming chain uses
is WorldChainer.max_residual = 0.2)."""
import numpy as np
import pytest

from runtime.align import Sim3, align_robust, sim3_from_camera, umeyama
from runtime.streaming import WorldChainer

BOUND = WorldChainer.max_residual


def _rot(rng):
    q = rng.normal(size=4)
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _deg(Ra, Rb):
    return float(np.degrees(np.arccos(np.clip((np.trace(Ra @ Rb.T) - 1) / 2, -1, 1))))


def _problem(seed, outliers, n=5000, noise=0.01):
    """A depth-map-like cloud (anisotropic) under a known similarity; a share of the
    destination points replaced by gross errors of the scene's own size."""
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, 3)) * [3.0, 2.0, 5.0]
    true = Sim3(float(rng.uniform(0.2, 5.0)), _rot(rng), rng.normal(size=3) * 4)
    dst = true.apply(src) + rng.normal(scale=noise * true.s, size=src.shape)
    bad = rng.random(n) < outliers
    dst[bad] = true.apply(src[bad]) + rng.normal(scale=8.0 * true.s, size=(bad.sum(), 3))
    return src, dst, true, bad


def test_collinear_or_coincident_points_are_refused():
    line = np.outer(np.linspace(-1, 1, 50), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="collinear"):
        umeyama(line, line * 2 + 1)
    with pytest.raises(ValueError, match="one place"):
        umeyama(np.ones((10, 3)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.eye(3)[:2], np.eye(3)[:2])


def test_confidence_weights_alone_remove_known_outliers():
    src, dst, true, bad = _problem(0, 0.3, noise=0.0)
    w = np.where(bad, 1e-9, 1.0)  # the network was unsure exactly where it was wrong
    fit = umeyama(src, dst, w)
    assert abs(fit.s / true.s - 1) < 1e-6 and _deg(fit.R, true.R) < 1e-5
    plain = umeyama(src, dst)
    assert abs(plain.s / true.s - 1) > 0.05 or _deg(plain.R, true.R) > 1.0


def test_residual_is_relative_to_the_scene_and_does_not_depend_on_its_scale():
    src, dst, _, _ = _problem(1, 0.1)
    a = align_robust(src, dst)
    b = align_robust(src, dst * 1000.0)
    assert a.residual == pytest.approx(b.residual, rel=1e-6)
    assert b.sim3.s == pytest.approx(1000.0 * a.sim3.s, rel=1e-9)


@pytest.mark.parametrize("outliers", [0.0, 0.2, 0.4])
def test_robust_fit_is_accurate_up_to_a_large_outlier_share(outliers):
    src, dst, true, _ = _problem(2, outliers)
    fit = align_robust(src, dst)
    # 1% point noise: rotation within 0.05 deg, scale within 0.1%, residual < 5% of spread
    assert _deg(fit.sim3.R, true.R) < 0.05 and abs(fit.sim3.s / true.s - 1) < 1e-3
    assert fit.residual < 0.05 and fit.residual < BOUND
    assert fit.inlier_fraction == pytest.approx(1 - outliers, abs=0.05)


def test_a_majority_of_outliers_is_flagged_not_trusted():
    """Beyond half the points, no robust estimator can tell data from outliers: the fit is
    wrong, and its residual says so (above the chain's bound -> fallback)."""
    src, dst, true, _ = _problem(3, 0.65)
    fit = align_robust(src, dst)
    assert fit.residual > BOUND
    assert _deg(fit.sim3.R, true.R) > 0.5 or abs(fit.sim3.s / true.s - 1) > 0.05


def test_errors_grow_smoothly_with_noise():
    errs = []
    for noise in (0.0, 0.01, 0.03, 0.1):
        src, dst, true, _ = _problem(4, 0.1, noise=noise)
        fit = align_robust(src, dst)
        errs.append((_deg(fit.sim3.R, true.R), abs(fit.sim3.s / true.s - 1), fit.residual))
    assert errs[0][0] < 1e-4 and errs[0][1] < 1e-6  # exact inliers: exact fit
    for col in range(3):
        vals = [e[col] for e in errs]
        assert vals == sorted(vals), (col, errs)
    assert errs[-1][0] < 0.5 and errs[-1][1] < 0.01  # 10% noise: still no jump


def test_camera_fallback_maps_the_shared_camera_onto_itself():
    rng = np.random.default_rng(5)
    E_dst = np.concatenate([_rot(rng), rng.normal(size=(3, 1))], 1)  # camera in the world
    G = Sim3(2.0, _rot(rng), rng.normal(size=3))  # world -> window frame, window scale
    E_src = G.extrinsics(E_dst)  # the same camera in the window's frame
    sim = sim3_from_camera(E_src, E_dst, 1.0 / G.s)
    # it is G's inverse: world points come back
    X = rng.normal(size=(20, 3))
    assert np.allclose(sim.apply(G.apply(X)), X, atol=1e-9)
