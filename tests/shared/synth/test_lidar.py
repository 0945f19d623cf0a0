"""The HDL-32E ray caster against a slow reference, and the ground/road geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.synth.generate import LIDAR2EGO_M, _lidar_poses
from shared.synth.lidar import (
    ELEVATIONS,
    HIT_GROUND,
    HIT_NONE,
    HIT_PRIM,
    HIT_SELF,
    cast_reference,
    cast_sweep,
    to_points,
)
from shared.synth.world import R_CURB, R_HW, R_SW, ground_profile, ground_z, make_world, road_sd, road_xy


@pytest.fixture(scope="module", params=[0, 1, 2])
def world(request):
    return make_world(np.random.default_rng([7, request.param]), duration=4.0)


@pytest.fixture(scope="module")
def sweep(world):
    poses, lidar2global = _lidar_poses(world, 2.0, 0.05, 1085)
    prims, _ = world.primitives(2.0 - 0.025)
    return world, prims, cast_sweep(world.road, prims, len(world.agents), poses), lidar2global


def test_kernel_matches_reference(sweep):
    """Random rays: same kind of hit, same primitive, range within the reference's 1 cm step (+ margin)."""
    world, prims, rays, _ = sweep
    rng = np.random.default_rng(0)
    n, m = rays.t.shape
    cand = np.argwhere(rays.kind != HIT_SELF)
    # half of the sample among rays that hit a primitive, so that objects are well covered
    prim_rays = np.argwhere(rays.kind == HIT_PRIM)
    pick = np.concatenate([cand[rng.choice(len(cand), 40, replace=False)],
                           prim_rays[rng.choice(len(prim_rays), min(40, len(prim_rays)), replace=False)]])
    for j, i in pick:
        t_ref, kind_ref, prim_ref = cast_reference(world.road, prims, rays.origins[j], rays.dirs[j, i])
        assert rays.kind[j, i] == kind_ref, (j, i, rays.t[j, i], t_ref)
        if kind_ref == HIT_NONE:
            continue
        assert rays.t[j, i] <= t_ref + 1e-9 and t_ref - rays.t[j, i] <= 0.011 + 0.002 * t_ref, (j, i)
        if kind_ref == HIT_PRIM:
            assert rays.prim[j, i] == prim_ref or math.isclose(
                cast_reference(world.road, prims[[rays.prim[j, i]]], rays.origins[j], rays.dirs[j, i])[0], t_ref,
                abs_tol=0.011)


def test_self_returns_and_rings(sweep):
    world, prims, rays, lidar2global = sweep
    # the ego roof shadows the lowest beams in most directions, never the upper ones
    self_frac = (rays.kind == HIT_SELF).mean(axis=0)
    assert self_frac[0] > 0.5 and self_frac[16:].max() == 0.0
    assert np.all(np.diff(self_frac[:12]) <= 1e-9)
    pts, prim, is_return = to_points(rays, np.linalg.inv(lidar2global), np.random.default_rng(0), 0.0, 0.0)
    assert pts.shape == (rays.t.size, 5) and pts.dtype == np.float32
    assert np.array_equal(pts[:32, 4], np.arange(32))
    r = np.linalg.norm(pts[:, :3], axis=1)
    assert r[(rays.kind == HIT_SELF).ravel()].max() < 2.5
    assert r[~is_return].max() < 2.5
    # ground points lie about 1.84 m below the sensor near the vehicle
    g = (rays.kind == HIT_GROUND).ravel() & (r < 12)
    assert abs(np.median(pts[g, 2]) + 1.84) < 0.2


def test_points_agree_with_ranges_without_noise(sweep):
    """Without noise a return lies at its range from the ray origin and within 1 mm of the primitive surface."""
    world, prims, rays, lidar2global = sweep
    pts, prim, is_return = to_points(rays, np.linalg.inv(lidar2global), np.random.default_rng(0), 0.0, 0.0)
    glob = pts[is_return, :3].astype(np.float64) @ lidar2global[:3, :3].T + lidar2global[:3, 3]
    t = rays.t.ravel()[is_return]
    o = np.repeat(rays.origins, rays.t.shape[1], axis=0)[is_return]
    assert np.allclose(np.linalg.norm(glob - o, axis=1), t, atol=2e-3)


def test_cast_sweep_validates():
    w = make_world(np.random.default_rng(0), 2.0)
    with pytest.raises(ConfigError, match="lidar_poses"):
        cast_sweep(w.road, np.zeros((0, 10)), 0, np.zeros((10, 4, 4)))
    prims, _ = w.primitives(0.0)
    poses, _ = _lidar_poses(w, 0.0, 0.05, 200)
    with pytest.raises(ConfigError, match="agent id"):
        cast_sweep(w.road, prims, 0, poses)


def test_road_coordinates_round_trip():
    rng = np.random.default_rng(1)
    for k in range(4):
        w = make_world(np.random.default_rng([3, k]), 2.0)
        for s, d in zip(rng.uniform(-100, 200, 50), rng.uniform(-30, 30, 50)):
            x, y = road_xy(w.road, s, d)
            s2, d2 = road_sd(w.road, x, y)
            assert abs(s2 - s) < 1e-6 and abs(d2 - d) < 1e-6


def test_ground_is_not_flat():
    """Camber (crown higher than the road edge), a curb step, a sidewalk above the road, slope along s."""
    w = make_world(np.random.default_rng([5, 0]), 2.0)
    P = w.road
    hw = P[R_HW]
    crown, edge = ground_profile(P, 10.0, 0.0)[0], ground_profile(P, 10.0, hw - 0.01)[0]
    side = ground_profile(P, 10.0, hw + 0.01)[0]
    assert crown > edge + 0.05
    assert side - edge == pytest.approx(P[R_CURB], abs=0.02)
    assert ground_profile(P, 10.0, hw + P[R_SW] - 0.01)[0] > side
    zs = [ground_z(P, *road_xy(P, s, 0.0))[0] for s in (0.0, 100.0)]
    assert zs[0] != pytest.approx(zs[1], abs=0.05)


def test_ego_pose_on_ground():
    w = make_world(np.random.default_rng([5, 1]), 4.0)
    for t in (0.0, 2.0, 4.0):
        e2g = w.ego_pose(t)
        x, y, z = e2g[:3, 3]
        assert z == pytest.approx(ground_z(w.road, x, y)[0])
        lidar = e2g @ LIDAR2EGO_M
        assert lidar[2, 3] - z == pytest.approx(1.84, abs=0.05)
        assert np.allclose(e2g[:3, :3] @ e2g[:3, :3].T, np.eye(3), atol=1e-9)
    assert len(ELEVATIONS) == 32


def test_keep_all_rays_false_leaves_only_returns(sweep):
    world, prims, rays, lidar2global = sweep
    g2l = np.linalg.inv(lidar2global)
    pts, prim, is_return = to_points(rays, g2l, np.random.default_rng(0), 0.01, 0.0, keep_all_rays=False)
    all_pts, all_prim, all_ret = to_points(rays, g2l, np.random.default_rng(0), 0.01, 0.0)
    assert is_return.all() and np.array_equal(pts, all_pts[all_ret]) and np.array_equal(prim, all_prim[all_ret])
    assert len(pts) <= int(((rays.kind == HIT_GROUND) | (rays.kind == HIT_PRIM)).sum())
    assert np.linalg.norm(pts[:, :3], axis=1).min() > 0.9  # beyond the ego vehicle
