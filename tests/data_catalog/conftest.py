"""Helpers of tests/data_catalog: fake processed sweeps (random points with the fields of a SweepResult)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from preprocess.project import Projection
from shared.records import CAMERAS, CameraCalib


def fake_cameras(channels=CAMERAS[:3]):
    cams = []
    for i, ch in enumerate(channels):
        k = np.array([[500.0, 0, 400], [0, 500.0, 225], [0, 0, 1]])
        l2c = np.eye(4)
        l2c[:3, 3] = (0.1 * i, 0.0, 0.0)
        cams.append(CameraCalib(channel=ch, intrinsic=k, lidar2cam=l2c, cam2ego=np.eye(4), ego2global=np.eye(4),
                                width=800, height=450))
    return tuple(cams)


def fake_sweep(rng: np.random.Generator, n: int, token: str, cameras=None, nan_rows=3):
    """(points (n, 5) float32 with a few NaN rows, result namespace shaped like preprocess.sweep.SweepResult)."""
    pts = np.empty((n, 5), np.float32)
    pts[:, :3] = rng.uniform(-60, 60, (n, 3))
    pts[:, 3] = rng.integers(0, 256, n)
    pts[:, 4] = rng.integers(0, 32, n)
    bad = rng.choice(n, size=min(nan_rows, n), replace=False)
    pts[bad, 0] = np.nan
    finite = np.isfinite(pts[:, :3]).all(axis=1)
    ground = (rng.random(n) < 0.4) & finite
    region = np.where(~ground & finite, rng.integers(-1, 7, n), -1).astype(np.int16)
    cameras = fake_cameras() if cameras is None else cameras
    # a projection with the Projection class: a random subset of points, into random cameras of the sweep
    m = n // 2
    pidx = np.sort(rng.choice(np.flatnonzero(finite), size=min(m, int(finite.sum())), replace=False))
    proj = Projection(point=pidx.astype(np.int32), cam=rng.integers(0, len(cameras), pidx.size).astype(np.uint8),
                      uv=np.stack([rng.uniform(0, 799.9, pidx.size), rng.uniform(0, 449.9, pidx.size)], 1)
                      .astype(np.float32),
                      depth=rng.uniform(1.0, 90.0, pidx.size).astype(np.float32), num_points=n,
                      channels=tuple(c.channel for c in cameras),
                      sizes=np.array([[c.width, c.height] for c in cameras], np.int64))
    stats = {"points": n, "nonfinite_points": int((~finite).sum()), "ground_points": int(ground.sum()),
             "ground_fraction": float(ground.sum() / max(1, finite.sum())), "clusters": 9,
             "regions_kept": int(np.unique(region[region >= 0]).size), "region_points": int((region >= 0).sum()),
             "noise_points": int(((region < 0) & ~ground & finite).sum()), "noise_fraction": 0.1,
             "projected_pairs": len(proj), "visible_points": int(proj.visible().sum())}
    res = SimpleNamespace(ground=ground, region=region, projection=proj,
                          aug_params=rng.normal(size=(2, 7)).astype(np.float32),
                          stats=SimpleNamespace(to_dict=lambda: dict(stats)),
                          timings_ms={"validate": 0.1, "ground": 1.0, "cluster": 2.0, "pooling": 0.5,
                                      "project": 0.3, "augment": 0.01, "total": 3.91})
    return pts, res, cameras


@pytest.fixture
def make_shard(tmp_path):
    """make_shard(scene, sizes, seed) -> (version_dir, [(SweepInput, result)], CommitResult)."""
    from data_catalog.format import SweepInput
    from data_catalog.writer import ShardWriter

    def make(scene="scene-a", sizes=(500, 1200, 0, 300), seed=0, vdir=None):
        vdir = tmp_path / "v" if vdir is None else vdir
        rng = np.random.default_rng(seed)
        w = ShardWriter(vdir, scene)
        items = []
        for i, n in enumerate(sizes):
            pts, res, cams = fake_sweep(rng, n, f"tok{i}", nan_rows=3 if n >= 3 else 0)
            sw = SweepInput(token=f"{scene}-tok{i}", points=pts, timestamp=1000 + i, path=f"s/{i}.pcd.bin",
                            lidar2ego=np.eye(4), ego2global=np.eye(4) * (i + 1), cameras=cams)
            w.add(sw, res, backend="cpu", load_ms=0.5)
            items.append((sw, res))
        w.add_error(f"{scene}-bad", "s/bad.pcd.bin", "truncated", "load")
        return vdir, items, w.commit()

    return make


@pytest.fixture(scope="session")
def catalog_store(tiny_store):
    """(store, version id) of the session's keyframes store of the generated ``tiny`` dataset."""
    store, summary = tiny_store
    return store, summary.version
