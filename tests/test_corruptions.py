"""The robustness corruptions (train.eval.robustness): tables, hand computations, determinism, layout, validation."""
from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from shared.errors import ConfigError, InputError
from train.eval.robustness import (CAMERA_CORRUPTIONS, LIDAR_CORRUPTIONS, beam_missing, brightness,
                                   camera_gaussian_noise, crosstalk, fog, hdl32e_beam, keyframe_rng, low_light,
                                   motion_blur, motion_distortion, occlusion_patches, point_dropping, snow)
from train.eval.robustness import camera as cam
from train.eval.robustness import lidar as lid

N15 = "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951"
N08 = "n008-2018-08-01-15-16-36-0400__LIDAR_TOP__1533151603597909"


def scan(fixtures_dir, name=N15) -> np.ndarray:
    """A real nuScenes LIDAR_TOP scan: (N, 5) x, y, z, intensity, ring (the ring is our 'extra column')."""
    return np.fromfile(fixtures_dir / "nuscenes" / f"{name}.pcd.bin", dtype=np.float32).reshape(-1, 5)


def synthetic(n=20000, seed=0) -> np.ndarray:
    """Points on the 32 HDL-32E beam elevations at 3-60 m, intensity 0..255, a 5th column 0..1 (a time lag)."""
    rng = np.random.default_rng(seed)
    beam = rng.integers(0, 32, n)
    el = np.radians(lid.HDL32E_ELEVATIONS_DEG[beam])
    az = rng.uniform(-np.pi, np.pi, n)
    r = rng.uniform(3, 60, n)
    xyz = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], 1)
    return np.concatenate([xyz, rng.integers(0, 256, (n, 1)), rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)


def image(seed=0, h=90, w=160) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


ALL = [("lidar", n) for n in LIDAR_CORRUPTIONS] + [("camera", n) for n in CAMERA_CORRUPTIONS]


def run(kind, name, severity, seed=0, x=None):
    f = LIDAR_CORRUPTIONS[name] if kind == "lidar" else CAMERA_CORRUPTIONS[name]
    x = (synthetic() if kind == "lidar" else image()) if x is None else x
    return f(x, severity, np.random.default_rng(seed))


def test_registries_are_the_documented_choices():
    assert list(LIDAR_CORRUPTIONS) == ["beam_missing", "point_dropping", "fog", "snow", "crosstalk",
                                       "motion_distortion"]
    assert list(CAMERA_CORRUPTIONS) == ["brightness", "low_light", "gaussian_noise", "motion_blur", "occlusion"]


@pytest.mark.parametrize("kind, name", ALL)
@pytest.mark.parametrize("bad", [0, 6, -1, 2.5, True, "3", None])
def test_unknown_severity_is_a_config_error_naming_the_choices(kind, name, bad):
    with pytest.raises(ConfigError, match=r"severity=.*1, 2, 3, 4, 5") as e:
        run(kind, name, bad)
    assert e.value.field == "severity"


@pytest.mark.parametrize("kind, name", ALL)
def test_same_seed_same_output_and_a_generator_is_required(kind, name):
    a, b = run(kind, name, 3, seed=7), run(kind, name, 3, seed=7)
    if kind == "lidar":
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.source, b.source)
        np.testing.assert_array_equal(a.altered, b.altered)
    else:
        assert torch.equal(a, b)
    f = LIDAR_CORRUPTIONS[name] if kind == "lidar" else CAMERA_CORRUPTIONS[name]
    with pytest.raises(ConfigError, match="Generator"):
        f(synthetic() if kind == "lidar" else image(), 3, 7)


@pytest.mark.parametrize("name", list(LIDAR_CORRUPTIONS))
def test_random_lidar_corruptions_differ_between_seeds(name):
    x = synthetic()
    a = LIDAR_CORRUPTIONS[name](x, 5, np.random.default_rng(1)).points
    b = LIDAR_CORRUPTIONS[name](x, 5, np.random.default_rng(2)).points
    assert a.shape != b.shape or not np.array_equal(a, b)


@pytest.mark.parametrize("name", list(LIDAR_CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 5])
def test_lidar_layout_kept_and_extra_columns_follow_their_source(name, severity):
    x = synthetic()
    before = x.copy()
    out = LIDAR_CORRUPTIONS[name](x, severity, np.random.default_rng(0))
    np.testing.assert_array_equal(x, before)  # input untouched
    assert out.points.dtype == np.float32 and out.points.shape[1] == 5
    assert out.source.shape == out.altered.shape == (len(out.points),)
    assert out.source.min() >= 0 and out.source.max() < len(x)
    np.testing.assert_array_equal(out.points[:, 4], x[out.source, 4])  # the time lag column is carried over
    assert np.isfinite(out.points).all() and (out.points[:, 3] >= 0).all()


@pytest.mark.parametrize("name", list(LIDAR_CORRUPTIONS))
def test_bad_points_are_input_errors(name):
    x = synthetic(100)
    x[17, 1] = np.nan
    with pytest.raises(InputError, match="1 of 100 points have a non-finite value .first at row 17"):
        LIDAR_CORRUPTIONS[name](x, 1, np.random.default_rng(0))
    with pytest.raises(InputError, match=r"\(N, C>=4\)"):
        LIDAR_CORRUPTIONS[name](x[:, :3], 1, np.random.default_rng(0))


# --- point dropping -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_point_dropping_drops_the_table_share_uniformly(severity):
    x = synthetic(40000)
    out = point_dropping(x, severity, np.random.default_rng(severity))
    ratio = lid.POINT_DROP_RATIOS[severity - 1]
    assert len(out.points) == len(x) - int(len(x) * ratio)
    np.testing.assert_array_equal(out.points, x[out.source])
    assert (np.diff(out.source) > 0).all()  # order kept
    # uniform: each half of the scan loses the table share within 4 binomial standard deviations
    for half in (out.source < 20000, out.source >= 20000):
        lost = 1 - half.sum() / 20000
        assert abs(lost - ratio) < 4 * math.sqrt(ratio * (1 - ratio) / 20000)


# --- beam missing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_beam_missing_removes_whole_elevation_bins(severity):
    x = synthetic(30000)
    beam = hdl32e_beam(x)
    np.testing.assert_array_equal(beam, np.rint((np.degrees(np.arctan2(x[:, 2], np.hypot(x[:, 0], x[:, 1])))
                                                 + 30.67) / (41.34 / 31)).astype(int))
    assert set(beam) == set(range(32))
    out = beam_missing(x, severity, np.random.default_rng(severity))
    kept = np.zeros(len(x), dtype=bool)
    kept[out.source] = True
    gone = sorted(set(beam[~kept]))
    assert len(gone) == lid.BEAM_MISSING_BEAMS[severity - 1]
    assert set(gone) <= set(range(2, 29))
    for b in range(32):  # a bin is all kept or all removed
        assert kept[beam == b].all() or not kept[beam == b].any()


@pytest.mark.fixtures
def test_beam_missing_severity_removes_more(fixtures_dir):
    x = scan(fixtures_dir)
    counts = [len(beam_missing(x, s, np.random.default_rng(0), ring_column=4).points) for s in range(1, 6)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    out = beam_missing(x, 3, np.random.default_rng(0), ring_column=4)
    assert len(set(x[:, 4])) - len(set(out.points[:, 4])) == 16  # whole sensor rings gone


@pytest.mark.fixtures
@pytest.mark.parametrize("name", [N15, N08])
def test_elevation_bins_match_the_sensor_rings_beyond_10m(fixtures_dir, name):
    x = scan(fixtures_dir, name)
    far = np.hypot(x[:, 0], x[:, 1]) > 10
    assert far.sum() > 5000
    assert (hdl32e_beam(x[far]) == x[far, 4]).mean() > 0.99


# --- fog ----------------------------------------------------------------------------------------------------
def slow_fog_reference(alpha, r0, n=2000):
    """Hahner's generate_integral_lookup_table for one r0: P_R_fog_soft on R = linspace(0, 200, n), zero for R > r0,
    each an integral over t = linspace(0, 2 tau_h, n + 1), R by R; then (R at the first maximum, the maximum)."""
    c, tau = 299792458.0, 2e-8
    t = np.linspace(0, 2 * tau, n + 1)
    ys = []
    for big_r in np.linspace(0, 200, n):
        if big_r > r0:
            ys.append(0.0)
            continue
        rr = big_r - c * t / 2
        xi = np.clip((rr - 0.9) / 0.1, 0, 1)
        inv = np.zeros_like(rr)
        inv[rr > 0.9] = 1 / rr[rr > 0.9] ** 2
        ys.append(np.trapz(np.sin(np.pi * t / (2 * tau)) ** 2 * np.exp(-2 * alpha * rr) * xi * inv, t))
    i = int(np.argmax(ys))
    return np.linspace(0, 200, n)[i] if ys[i] > 0 else 0.0, ys[i]


@pytest.mark.parametrize("alpha, r0", [(0.06, 30.0), (0.005, 3.2), (0.02, 0.5)])
def test_fog_table_matches_a_slow_reference(alpha, r0):
    dist, integral = lid.fog_table(alpha)
    d_ref, i_ref = slow_fog_reference(alpha, r0)
    k = int(round(r0 * 10))
    assert dist[k] == pytest.approx(d_ref, abs=1e-9)
    assert integral[k] == pytest.approx(i_ref, rel=1e-9, abs=1e-300)


def test_fog_on_hand_computed_points():
    pts = np.array([[0, 60, 0, 100, 0.5], [0, 30, 0, 100, 0.25], [0, 0, 0, 10, 0]], dtype=np.float32)
    out = fog(pts, 5, np.random.default_rng(0))
    alpha, beta_ratio = 0.06, lid.FOG_BETA / (1e-6 / math.pi)
    dist, integral = lid.fog_table(alpha)
    soft = min(255.0, integral[600] * 100 * 60 ** 2 * beta_ratio)
    assert soft > round(math.exp(-2 * alpha * 60) * 100)  # the far point is lost in the fog ...
    assert out.altered[0] and out.points[0, 3] == pytest.approx(soft, rel=1e-6)
    rng_after = np.linalg.norm(out.points[0, :3])  # ... and returns from fog_distance * 60 / U(59, 61)
    assert dist[600] * 60 / 61 - 1e-4 <= rng_after <= dist[600] * 60 / 59 + 1e-4
    assert out.points[0, 0] == 0 and out.points[0, 1] > 0 and out.points[0, 4] == 0.5
    hard30 = round(math.exp(-2 * alpha * 30) * 100)
    assert integral[300] * 100 * 30 ** 2 * beta_ratio < hard30  # the nearer point is only attenuated
    assert not out.altered[1] and out.points[1, 3] == hard30
    np.testing.assert_array_equal(out.points[1, :3], pts[1, :3])
    np.testing.assert_array_equal(out.points[2], pts[2])  # at the sensor: nothing to attenuate or scatter


@pytest.mark.fixtures
def test_fog_severity_monotone_on_a_real_scan(fixtures_dir):
    x = scan(fixtures_dir)
    outs = [fog(x, s, np.random.default_rng(0)) for s in range(1, 6)]
    fogged = [o.altered.mean() for o in outs]
    hard_i = [o.points[~o.altered, 3].mean() for o in outs]
    assert fogged == sorted(fogged) and fogged[-1] > 0.1
    assert hard_i == sorted(hard_i, reverse=True)


# --- snow ---------------------------------------------------------------------------------------------------
def test_snow_rates_hand_computation():
    rate, phi = lid.SNOW_PARAMS[0]
    mean_m = 10.0 / (25.5 * rate ** -0.48) / 1000  # 0.62 mm: the 20 mm cap does not matter
    lam, alpha = lid.snow_rates(1)
    assert lam == pytest.approx(phi / (2 * mean_m), rel=1e-3)  # 1.5 phi E[D^2]/E[D^3] = phi / (2 mean)
    assert alpha == 2 * lam
    lams = [lid.snow_rates(s)[0] for s in range(1, 6)]
    assert lams == sorted(lams)


@pytest.mark.parametrize("severity", [1, 5])
def test_snow_hits_at_the_exponential_rate_on_the_ray(severity):
    n = 40000
    d = np.random.default_rng(3).normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = np.concatenate([d * 100, np.full((n, 1), 200), np.zeros((n, 1))], 1).astype(np.float32)
    out = snow(pts, severity, np.random.default_rng(severity))
    lam, alpha = lid.snow_rates(severity)
    p = math.exp(-lam * 1.0) - math.exp(-lam * 100.0)  # first flake in [1 m, 100 m)
    assert abs(out.altered.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    r = np.linalg.norm(out.points[:, :3], axis=1)
    h = out.altered
    assert (r[h] >= 1 - 1e-4).all() and (r[h] < 100).all()
    np.testing.assert_allclose(out.points[h, :3] / r[h, None], d[h], atol=1e-5)  # on the original ray
    assert (out.points[h, 3] <= 200).all()
    np.testing.assert_array_equal(out.points[~h, 3], np.round(np.exp(-2 * alpha * 100) * 200))
    np.testing.assert_array_equal(out.points[~h, :3], pts[~h, :3])


# --- crosstalk ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 5])
def test_crosstalk_moves_the_table_share_by_3m_noise(severity):
    x = synthetic(50000)
    out = crosstalk(x, severity, np.random.default_rng(0))
    assert out.altered.sum() == int(50000 * lid.CROSSTALK_RATIOS[severity - 1])
    np.testing.assert_array_equal(out.points[~out.altered], x[~out.altered])
    move = (out.points[out.altered, :3] - x[out.altered, :3]).ravel()
    assert abs(move.std() - 3.0) < 0.25 and abs(move.mean()) < 0.3


# --- motion distortion --------------------------------------------------------------------------------------
def test_motion_distortion_scales_with_sigma_and_grows_along_the_sweep():
    x = synthetic(30000)
    d = {s: motion_distortion(x, s, np.random.default_rng(4)).points[:, :3].astype(np.float64) - x[:, :3]
         for s in (1, 3, 5)}
    for s in (3, 5):  # the same draws, scaled by sigma: displacement proportional to severity
        ratio = lid.MOTION_SIGMAS[s - 1] / lid.MOTION_SIGMAS[0]
        np.testing.assert_allclose(d[s], ratio * d[1], atol=2e-5 * ratio * 60)
    # within an azimuth wedge the mean displacement is tau * delta: all wedge means are multiples of one delta
    az = np.arctan2(x[:, 1], x[:, 0])
    means = np.array([d[5][(az >= a) & (az < a + 0.1)].mean(0) for a in np.arange(-3.1, 3.0, 0.5)])
    big = means[np.argmax(np.linalg.norm(means, axis=1))]
    cross = np.linalg.norm(np.cross(means, big), axis=1) / np.linalg.norm(big)
    assert cross.max() < 0.02  # per-point jitter (0.05 m at severity 5) averages out
    assert not motion_distortion(x, 5, np.random.default_rng(4)).altered.any()


# --- camera -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CAMERA_CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 5])
def test_images_keep_shape_dtype_and_input(name, severity):
    img = image()
    before = img.clone()
    out = CAMERA_CORRUPTIONS[name](img, severity, np.random.default_rng(0))
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert torch.equal(img, before)


@pytest.mark.parametrize("bad", [np.zeros((3, 4, 4), np.uint8), torch.zeros(4, 4, 3, dtype=torch.uint8),
                                 torch.zeros(3, 4, 4)])
def test_bad_images_are_input_errors(bad):
    with pytest.raises(InputError, match=r"torch.uint8 tensor \(3, H, W\)"):
        brightness(bad, 1, np.random.default_rng(0))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_matches_colorsys(severity):
    img = image(1, 12, 10)
    img[:, 0, 0] = 0  # a black pixel
    out = brightness(img, severity, np.random.default_rng(0))
    c = cam.BRIGHTNESS_SHIFTS[severity - 1]
    for i in range(12):
        for j in range(10):
            h, s, v = colorsys.rgb_to_hsv(*(img[:, i, j].double() / 255).tolist())
            ref = np.array(colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))) * 255
            assert np.abs(out[:, i, j].double().numpy() - ref).max() <= 1.0 + 1e-9


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_noise_std_matches_the_table(severity):
    grey = torch.full((3, 200, 200), 128, dtype=torch.uint8)
    out = camera_gaussian_noise(grey, severity, np.random.default_rng(0)).double() / 255
    c = cam.GAUSSIAN_NOISE_STDS[severity - 1]
    # reference: the formula with other draws (clipping at 0 and 1 narrows the tails at high severity)
    ref = np.floor(np.clip(128 / 255 + np.random.default_rng(9).normal(0, c, 120000), 0, 1) * 255) / 255
    assert abs(out.std().item() - ref.std()) < 0.005
    assert abs(out.std().item() - c) < 0.01 if severity <= 2 else out.std().item() < c


@pytest.mark.fixtures
def test_noise_and_low_light_lower_the_snr_with_severity(fixtures_dir):
    from train.data.camera import decode_image

    img = decode_image(next((fixtures_dir / "nuscenes").glob("*CAM_FRONT__*.jpg")))[:, ::4, ::4].contiguous()
    x = img.double()

    def snr(out):  # signal power over the power of what the corruption added beyond an affine map of the input
        y = out.double().ravel()
        a = torch.stack([x.ravel(), torch.ones_like(y)], 1)
        fit = a @ torch.linalg.lstsq(a, y[:, None]).solution
        return (fit.var() / (y - fit[:, 0]).var()).item()

    for f in (camera_gaussian_noise, low_light):
        snrs = [snr(f(img, s, np.random.default_rng(0))) for s in range(1, 6)]
        assert snrs == sorted(snrs, reverse=True), (f.__name__, snrs)
    means = [low_light(img, s, np.random.default_rng(0)).double().mean().item() for s in range(1, 6)]
    assert means == sorted(means, reverse=True) and means[-1] < 0.4 * x.mean().item()


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_motion_blur_spreads_a_line_over_the_kernel(severity):
    img = torch.zeros(3, 5, 400, dtype=torch.uint8)
    img[:, :, 200] = 255
    out = motion_blur(img, severity, np.random.default_rng(0))
    k = int(cam.MOTION_BLUR_FRACTIONS[severity - 1] * 400 * 0.5)
    row = out[0, 2]
    assert (row > 0).sum().item() == k
    assert set(row[row > 0].tolist()) == {255 // k}
    assert row.nonzero().min().item() == 200 - k // 2 and row.nonzero().max().item() == 200 + (k - 1) // 2


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_occlusion_covers_the_table_area(severity):
    white = torch.full((3, 900, 1600), 255, dtype=torch.uint8)
    out = occlusion_patches(white, severity, np.random.default_rng(severity))
    covered = (out[0] == 0).double().mean().item()
    assert abs(covered - cam.OCCLUSION_AREAS[severity - 1]) < 0.002
    assert torch.equal((out == 0).all(0), (out == 0).any(0))  # all channels blacked together


def test_keyframe_rng_is_per_key():
    a = keyframe_rng(3, "token-a").normal(size=4)
    np.testing.assert_array_equal(a, keyframe_rng(3, "token-a").normal(size=4))
    assert not np.array_equal(a, keyframe_rng(3, "token-b").normal(size=4))
    assert not np.array_equal(a, keyframe_rng(4, "token-a").normal(size=4))
    with pytest.raises(ConfigError, match="seed"):
        keyframe_rng(-1, 0)
