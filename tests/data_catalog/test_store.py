"""Encoding, atomic shard commits and the reader, on fake processed sweeps (no dataset needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_catalog import writer as shard_writer
from data_catalog.format import (DEPTH_SCALE, UV_SCALE, XYZ_LIMIT, XYZ_SCALE, SweepInput, dequantise_xyz,
                                 encode_sweep, float16_columns, quantise_xyz, region_summaries, to_uint16)
from data_catalog.layout import (ERRORS_TABLE, MANIFEST, clean_stale_tmp, committed_scenes, file_table,
                                 is_committed, read_manifest, shard_failures, tmp_dirs, write_file)
from data_catalog.reader import Shard
from data_catalog.tables import QUANTILE_NAMES, finalize, read_shard_tables, size_quantiles
from data_catalog.versions import run_records, write_run_record
from data_catalog.writer import ShardWriter, link_shard
from shared.errors import InputError
from shared.records import CAMERAS

from .conftest import fake_sweep


def reference_region_summary(xyz, region):
    """Slow per-region loop over the unquantised points."""
    out = {}
    for r in np.unique(region[region >= 0]):
        p = xyz[region == r].astype(np.float64)
        out[int(r)] = (p.shape[0], p.mean(0), p.min(0), p.max(0))
    return out


def test_quantise_xyz_error_bound_and_flags():
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-300, 300, (10000, 3))
    xyz[0] = (400.0, 0.0, 0.0)  # beyond the int16 range: clipped
    xyz[1] = (np.nan, 1.0, 2.0)
    xyz[2] = (np.inf, 1.0, 2.0)
    q, finite, clipped = quantise_xyz(xyz)
    assert q.dtype == np.int16
    assert finite.tolist()[:3] == [True, False, False] and finite[3:].all()
    assert clipped[0] and not clipped[1:].any()
    back = dequantise_xyz(q)
    ok = finite & ~clipped
    # half a centimetre, plus float32 rounding of the decoded value (<= 2e-5 m at 300 m)
    assert np.abs(back[ok] - xyz[ok]).max() <= XYZ_SCALE / 2 + 4e-5
    assert back[0, 0] == pytest.approx(XYZ_LIMIT, abs=1e-3)
    assert (q[1:3] == 0).all()


def test_float16_columns_bit_for_bit_as_numpy():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32)
    # every float16 value and float32 values a few ulps around it (the rounding boundaries)
    h = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    near = (h[:, None].astype(np.int64) + np.array([-4097, -4096, -4095, -1, 0, 1, 4095, 4096, 4097])).ravel()
    near = near[(near >= 0) & (near < 2**32)].astype(np.uint32)
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00001, 0x33000000,
                        0x32FFFFFF, 0x38000000, 0x387FFFFF, 0x477FEFFF, 0x477FF000, 0x47800000], np.uint32)
    col = np.concatenate([bits, near, special]).view(np.float32)
    pts = np.zeros((len(col), 5), np.float32)
    pts[:, 3] = col
    pts[:, 4] = col[::-1]
    got = float16_columns(pts, 3)
    with np.errstate(over="ignore"):
        want = pts[:, 3:].astype(np.float16)
    assert got.dtype == np.float16 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    # float64 input goes through numpy
    np.testing.assert_array_equal(float16_columns(pts.astype(np.float64)[:100], 3), want[:100])


def test_to_uint16_matches_numpy_and_names_the_value():
    rng = np.random.default_rng(6)
    uv = rng.uniform(0, 1600, (5000, 2)).astype(np.float32)
    uv[:10] = np.array([0.0625, 0.1875, 0.3125, 1599.9375, 0.0, 8191.875, 4.5625, 2.4375, 3.0, 7.0625])[:, None]
    np.testing.assert_array_equal(to_uint16(uv, UV_SCALE, "uv"),
                                  np.round(uv.astype(np.float64) / UV_SCALE).astype(np.uint16))
    depth = np.array([0.004, 0.005, 0.015, 700.0, np.float32(655.35)], np.float32)
    want = np.round(np.minimum(depth, 65535 * DEPTH_SCALE).astype(np.float64) / DEPTH_SCALE)
    np.testing.assert_array_equal(to_uint16(depth, DEPTH_SCALE, "depth", clamp=65535 * DEPTH_SCALE),
                                  want.astype(np.uint16))
    for bad in (-1.0, 9000.0, np.nan):
        with pytest.raises(InputError, match="pixel coordinates out of the store's range"):
            to_uint16(np.array([[1.0, bad]]), UV_SCALE, "pixel coordinates")


def test_region_size_quantiles_equal_numpy():
    """The sweeps table's region-size quantiles: value for value what np.quantile (linear) gives."""
    rng = np.random.default_rng(3)
    for trial in range(3000):
        n = int(rng.integers(1, 400)) if trial > 2 else trial + 1
        sizes = (rng.integers(1, 5000, n) if trial % 2 else rng.exponential(100, n).astype(np.int64) + 1)
        want = np.quantile(sizes.astype(np.float64), [0.0, 0.1, 0.5, 0.9, 1.0])
        got = size_quantiles(sizes.astype(np.int32))
        assert [got[k] for k in QUANTILE_NAMES] == [float(v) for v in want], (n, sizes)
    assert all(np.isnan(v) for v in size_quantiles(np.zeros(0, np.int32)).values())


def test_one_pass_encoding_equals_the_separate_kernels():
    """encode_sweep encodes float32 points in one fused pass (quantise, flags, float16, region sums); float64 or
    strided points take the separate kernels. Both give the same arrays, bit for bit, with NaN rows, clipped
    coordinates, special feature values (NaN payloads, infinities, subnormals, overflow) and region ids."""
    rng = np.random.default_rng(11)
    pts, res, cams = fake_sweep(rng, 5000, "t", nan_rows=40)
    pts[:5, 1] = [400.0, -400.0, 327.67, -327.675, 1e9]  # clipped, at the limit, far out
    specials = np.array([0x7F800001, 0xFFC00001, 0x7F800000, 0x33000000, 0x387FFFFF, 0x477FF000, 0x47800000,
                         0x80000000], np.uint32).view(np.float32)
    pts[10:18, 3] = specials
    pts[20:28, 4] = specials[::-1]
    res.region[res.region == 3] = 250  # a sparse id range
    wide = np.zeros((5000, 7), np.float32)
    wide[:, :5] = pts
    encodings = [encode_sweep(SweepInput("t", p, cameras=cams), res, CAMERAS)
                 for p in (pts, pts.astype(np.float64), wide[:, :5])]  # fused, float64, strided
    assert encodings[0]["_clipped"] >= 3
    for j, other in enumerate(encodings[1:]):
        assert other.keys() == encodings[0].keys()
        for k, v in encodings[0].items():
            if not isinstance(v, np.ndarray):
                assert v == other[k], k
                continue
            w = other[k]
            assert v.dtype == w.dtype, k
            if k == "features" and j == 0:  # float64 NaNs carry other payload bits: NaN where NaN, else equal
                nan = np.isnan(v)
                np.testing.assert_array_equal(nan, np.isnan(w))
                assert nan.sum() >= 4
                v, w = v[~nan], w[~nan]
            np.testing.assert_array_equal(v.view(np.uint8), w.view(np.uint8), err_msg=k)


def test_region_summaries_match_reference():
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(3000, 3)) * 10
    region = rng.integers(-1, 40, 3000).astype(np.int16)
    got = region_summaries(xyz, region)
    ref = reference_region_summary(xyz, region)
    assert got["region_id"].tolist() == sorted(ref)
    for i, r in enumerate(got["region_id"]):
        n, c, lo, hi = ref[int(r)]
        assert got["region_points"][i] == n
        np.testing.assert_allclose(got["region_centroid"][i], c, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(got["region_min"][i], lo, rtol=1e-6)
        np.testing.assert_allclose(got["region_max"][i], hi, rtol=1e-6)
    empty = region_summaries(xyz, np.full(3000, -1, np.int16))
    assert empty["region_id"].size == 0 and empty["region_centroid"].shape == (0, 3)


def test_round_trip_through_the_reader(make_shard):
    vdir, items, res = make_shard(sizes=(500, 1200, 0, 300))
    assert res.status == "committed" and res.path == vdir / "shards" / "scene-a"
    man = res.manifest
    assert man["counts"] == {"sweeps": 4, "points": 2000, "errors": 1, "warnings": 0,
                             "pairs": sum(len(r.projection) for _, r in items),
                             "regions": sum(np.unique(r.region[r.region >= 0]).size for _, r in items)}
    shard = Shard(res.path)
    assert len(shard) == 4 and shard.tokens == [sw.token for sw, _ in items]
    for i, (sw, r) in enumerate(items):
        got = shard.sweep(i)
        n = sw.points.shape[0]
        assert len(got) == n and got.token == sw.token
        finite = np.isfinite(sw.points[:, :3]).all(1)
        np.testing.assert_array_equal(got.finite, finite)
        np.testing.assert_array_equal(got.ground, r.ground)
        np.testing.assert_array_equal(got.region, r.region)
        assert np.abs(got.xyz[finite] - sw.points[finite, :3]).max(initial=0) <= XYZ_SCALE / 2 + 1e-5
        assert (got.xyz[~finite] == 0).all()
        np.testing.assert_array_equal(got.features, sw.points[:, 3:].astype(np.float16))
        # projections: same pairs; cameras renumbered into the shard's channel list
        p = r.projection
        np.testing.assert_array_equal(got.proj_point, p.point)
        assert [shard.channels[c] for c in got.proj_cam] == [p.channels[c] for c in p.cam]
        assert np.abs(got.uv - p.uv).max(initial=0) <= UV_SCALE / 2 + 1e-4
        assert np.abs(got.depth - p.depth).max(initial=0) <= DEPTH_SCALE / 2 + 1e-5
        np.testing.assert_array_equal(got.aug_params, r.aug_params)
        assert got.timestamp == 1000 + i
        np.testing.assert_array_equal(got.ego2global, np.eye(4) * (i + 1))
        # calibration: present cameras at their CAMERAS index, absent ones NaN
        for cam in sw.cameras:
            c = CAMERAS.index(cam.channel)
            np.testing.assert_array_equal(got.cam_lidar2cam[c], cam.lidar2cam)
            assert got.cam_size[c].tolist() == [cam.width, cam.height]
        assert np.isnan(got.cam_intrinsic[CAMERAS.index("CAM_BACK")]).all()
        ref = reference_region_summary(np.nan_to_num(sw.points[:, :3]), r.region)
        assert got.region_id.tolist() == sorted(ref)
        for j, rid in enumerate(got.region_id):
            assert got.region_points[j] == ref[int(rid)][0]
            np.testing.assert_allclose(got.region_centroid[j], ref[int(rid)][1], atol=1e-3)
    # sweeps are views of the shard's flat arrays, not copies
    s1 = shard.sweep(1)
    assert np.shares_memory(s1.raw["xyz"], shard.array("xyz"))
    assert np.shares_memory(s1.region, shard.array("region"))
    assert np.shares_memory(s1.raw["proj_uv"], shard.array("proj_uv"))
    assert shard.sweep(-1).token == items[-1][0].token
    with pytest.raises(IndexError):
        shard.sweep(4)
    sweeps = shard.sweeps_table().to_pydict()
    assert sweeps["token"] == [sw.token for sw, _ in items] and sweeps["index"] == [0, 1, 2, 3]
    assert sweeps["t_load_ms"] == [0.5] * 4 and sweeps["points"] == [500, 1200, 0, 300]
    errors = shard.errors_table().to_pylist()
    assert errors == [{"token": "scene-a-bad", "scene": "scene-a", "file": "s/bad.pcd.bin", "stage": "load",
                       "reason": "truncated", "level": "error"}]


def test_sharded_arrays_written_from_memory_match_their_manifest(make_shard, monkeypatch):
    """With small chunks every per-point array spans many chunks (one Zarr shard file each): the files the writer
    puts on disk hash as its manifest says (hashed while writing), plain zarr reads them back chunk by chunk,
    and the features / pixels are bit-shuffled, the coordinates byte-shuffled."""
    import zarr

    monkeypatch.setattr(shard_writer, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(shard_writer, "COMPRESS_MIN_BYTES", 1024)
    vdir, items, res = make_shard(sizes=(3000, 2500, 4000))
    assert file_table(res.path) == res.manifest["files"]
    assert not [p for p in res.path.rglob("*") if p.name.endswith(".partial")]
    g = zarr.open_group(str(res.path), mode="r")
    xyz = g["xyz"]
    assert xyz.shards is not None and xyz.chunks[0] < xyz.shape[0] // 10
    want = np.concatenate([quantise_xyz(sw.points[:, :3])[0] for sw, _ in items])
    np.testing.assert_array_equal(xyz[:], want)
    np.testing.assert_array_equal(xyz[1234:5678], want[1234:5678])
    np.testing.assert_array_equal(g["region"][:], np.concatenate([r.region for _, r in items]).astype(np.int16))
    shuffles = {name: json.loads((res.path / name / "zarr.json").read_text())
                for name in ("xyz", "features", "proj_uv")}

    def blosc(meta):
        codecs = meta["codecs"]
        inner = codecs[0]["configuration"]["codecs"] if codecs[0]["name"] == "sharding_indexed" else codecs
        return next(c["configuration"]["shuffle"] for c in inner if c["name"] == "blosc")

    assert [blosc(shuffles[n]) for n in ("xyz", "features", "proj_uv")] == ["shuffle", "bitshuffle", "bitshuffle"]


def test_sweep_reads_only_the_arrays_asked_for(make_shard):
    _, items, res = make_shard(sizes=(100, 200))
    shard = Shard(res.path)
    sw = shard.sweep(1, arrays=("region",))
    np.testing.assert_array_equal(sw.region, items[1][1].region)
    assert set(shard._cache) == {"offsets", "region", "flags"}


def test_readable_with_plain_zarr_and_pyarrow(make_shard):
    """The layout documented in docs/store.md, read with zarr + pyarrow only (in a fresh interpreter)."""
    _, items, res = make_shard(sizes=(400, 700))
    code = f"""
import json, sys, zarr, numpy as np, pyarrow.parquet as pq
g = zarr.open_group({str(res.path)!r}, mode="r")
off = g["offsets"][:]
i = 1
xyz = g["xyz"][off[i]:off[i + 1]] * g.attrs["xyz_scale"]
region = g["region"][off[i]:off[i + 1]]
ground = (g["flags"][off[i]:off[i + 1]] & 1).astype(bool)
t = pq.read_table({str(res.path / 'sweeps.parquet')!r})
print(json.dumps({{"token": g.attrs["tokens"][i], "n": int(xyz.shape[0]), "region": region.tolist(),
                   "ground": int(ground.sum()), "points": t.column("points").to_pylist(),
                   "x0": float(xyz[0, 0])}}))
assert "data_catalog" not in sys.modules and "preprocess" not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    doc = json.loads(out.stdout)
    sw, r = items[1]
    assert doc["token"] == sw.token and doc["n"] == 700
    assert doc["region"] == r.region.tolist() and doc["ground"] == int(r.ground.sum())
    assert doc["points"] == [400, 700]
    x0 = sw.points[0, 0]
    assert (abs(doc["x0"] - x0) <= 0.005 + 1e-6) if np.isfinite(x0) else doc["x0"] == 0


def test_shard_with_only_errors_commits_and_reads(tmp_path):
    w = ShardWriter(tmp_path / "v", "scene-empty")
    w.add_error("t1", "a.pcd.bin", "missing image", "load")
    res = w.commit()
    assert res.status == "committed" and res.manifest["counts"]["sweeps"] == 0
    shard = Shard(res.path)
    assert len(shard) == 0 and list(shard) == []
    assert shard.errors_table().num_rows == 1


def test_second_writer_skips_a_committed_shard(make_shard, tmp_path):
    vdir, _, first = make_shard(seed=0)
    before = read_manifest(first.path)
    _, _, second = make_shard(seed=1, vdir=vdir)  # different content, same scene
    assert second.status == "exists"
    assert read_manifest(first.path) == before
    assert tmp_dirs(vdir) == []


def test_losing_the_rename_race_discards_the_loser(make_shard, monkeypatch):
    """Both writers pass the 'already committed?' check, both write; the second rename fails and its copy goes."""
    vdir, _, first = make_shard(seed=0)
    before = read_manifest(first.path)
    calls = {"n": 0}
    real = is_committed

    def late(v, s):  # the pre-check at the start of commit sees nothing yet
        calls["n"] += 1
        return False if calls["n"] == 1 else real(v, s)

    monkeypatch.setattr(shard_writer, "is_committed", late)
    _, _, second = make_shard(seed=1, vdir=vdir)
    assert second.status == "exists" and calls["n"] >= 2
    assert read_manifest(first.path) == before
    assert tmp_dirs(vdir) == []


def test_a_crash_while_writing_leaves_nothing_visible(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    w = ShardWriter(tmp_path / "v", "scene-x")
    pts, res, cams = fake_sweep(rng, 100, "t")
    w.add(SweepInput("t", pts, cameras=cams), res)

    def boom(*a, **k):
        raise OSError("disk full")

    real_write = write_file
    written = []

    def full_after_three(path, data):  # the disk fills up midway through the shard's files
        if len(written) >= 3:
            raise OSError(f"[Errno 28] No space left on device: {path}")
        written.append(path)
        return real_write(path, data)

    for fn, match in (("table_bytes", "disk full"), ("write_file", "No space left")):
        monkeypatch.setattr(shard_writer, fn, boom if fn == "table_bytes" else full_after_three)
        with pytest.raises(OSError, match=match):
            w.commit()
        monkeypatch.undo()
        assert not (tmp_path / "v" / "shards" / "scene-x").exists()
        assert tmp_dirs(tmp_path / "v") == []
        assert committed_scenes(tmp_path / "v") == []
    assert len(written) == 3  # the second case did write files before it failed, and they are gone
    assert w.commit().status == "committed"  # the writer still holds its sweeps: a retry commits


def test_shard_without_manifest_is_not_visible(tmp_path):
    (tmp_path / "v" / "shards" / "scene-half").mkdir(parents=True)
    (tmp_path / "v" / "shards" / "scene-half" / "zarr.json").write_text("{}")
    assert committed_scenes(tmp_path / "v") == []
    assert not is_committed(tmp_path / "v", "scene-half")


def test_clean_stale_tmp_removes_only_dead_writers(tmp_path):
    import socket

    shards = tmp_path / "v" / "shards"
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = shards / f".tmp-scene-0001-{host}-{dead.pid}-abcd1234"
    live = shards / f".tmp-scene-0002-{host}-{os.getpid()}-abcd1234"
    other_host = shards / f".tmp-scene-0003-someotherhost-{dead.pid}-abcd1234"
    for p in (stale, live, other_host):
        p.mkdir(parents=True)
    removed = clean_stale_tmp(tmp_path / "v")
    assert removed == [stale]
    assert live.is_dir() and other_host.is_dir()


def test_bad_inputs_to_the_writer_are_named(tmp_path):
    rng = np.random.default_rng(0)
    w = ShardWriter(tmp_path / "v", "scene-y")
    pts, res, cams = fake_sweep(rng, 50, "t")
    from shared.errors import InputError

    with pytest.raises(InputError, match="points must be"):
        w.add(SweepInput("t", pts[:, :2], cameras=cams), res)
    w.add(SweepInput("t", pts, cameras=cams), res)
    pts4, res4, _ = fake_sweep(rng, 50, "u")
    with pytest.raises(InputError, match="feature columns"):
        w.add(SweepInput("u", pts4[:, :4], cameras=cams), res4)
    with pytest.raises(InputError, match="cannot name a shard"):
        ShardWriter(tmp_path / "v", "../evil")


def test_failed_sweeps_leave_no_rows_and_columns_grow(tmp_path):
    """Sweeps that fail midway through their encoding (after their points were written into the shard's
    columns) leave nothing behind, and columns that outgrow their first capacity keep every row: the shard is
    the same, file for file, as one written by a writer that never saw the bad sweeps."""
    from shared.errors import InputError

    rng = np.random.default_rng(4)
    good = [fake_sweep(rng, n, f"g{i}") for i, n in enumerate((700, 900, 0, 1300))]
    bad_pts, bad_res, cams = fake_sweep(rng, 600, "bad")
    bad_res.projection.uv[5, 0] = 9000.0  # pixel out of the store's range: raised after the points are encoded

    def sweep(i):
        pts, res, c = good[i]
        return SweepInput(f"g{i}", pts, cameras=c), res

    clean = ShardWriter(tmp_path / "a", "scene-z")
    for i in range(4):
        clean.add(*sweep(i))
    w = ShardWriter(tmp_path / "b", "scene-z", expected_points=100)  # grows several times
    with pytest.raises(InputError, match="pixel coordinates"):
        w.add(SweepInput("bad", bad_pts, cameras=cams), bad_res)  # fails first: columns created, then emptied
    for i in range(4):
        w.add(*sweep(i))
        if i == 1:
            with pytest.raises(InputError, match="pixel coordinates"):
                w.add(SweepInput("bad", bad_pts, cameras=cams), bad_res)
            with pytest.raises(InputError, match="feature columns"):
                w.add(SweepInput("bad", bad_pts[:, :4], cameras=cams), bad_res)
    assert len(w) == 4 and w._columns["xyz"].buf.shape[0] > 100 + 1024  # it grew
    a, b = clean.commit(), w.commit()
    assert a.manifest["content_sha256"] == b.manifest["content_sha256"]
    assert a.manifest["counts"]["points"] == 2900


def test_finalize_and_scene_table(make_shard):
    vdir, items, _ = make_shard("scene-a", sizes=(100, 200), seed=0)
    make_shard("scene-b", sizes=(300,), seed=1, vdir=vdir)
    paths = finalize(vdir)
    import pyarrow.parquet as pq

    sweeps = pq.read_table(paths["sweeps.parquet"]).to_pydict()
    assert sweeps["scene"] == ["scene-a", "scene-a", "scene-b"]
    assert pq.read_table(paths["errors.parquet"]).num_rows == 2
    scenes = {r["scene"]: r for r in pq.read_table(paths["scenes.parquet"]).to_pylist()}
    a = scenes["scene-a"]
    assert a["sweeps"] == 2 and a["points"] == 300 and a["errors"] == 1
    ground = sum(int(r.ground.sum()) for _, r in items)
    finite = sum(int(np.isfinite(sw.points[:, :3]).all(1).sum()) for sw, _ in items)
    assert a["ground_fraction"] == pytest.approx(ground / finite)
    assert a["store_bytes"] == read_manifest(vdir / "shards" / "scene-a")["bytes"]
    assert a["bytes_per_point"] == pytest.approx(a["store_bytes"] / 300)


def test_points_without_feature_columns(tmp_path):
    rng = np.random.default_rng(3)
    w = ShardWriter(tmp_path / "v", "scene-k")
    pts, res, cams = fake_sweep(rng, 80, "t")
    w.add(SweepInput("t", np.ascontiguousarray(pts[:, :3]), cameras=cams), res)
    out = w.commit()
    assert not (out.path / "features").exists()
    sw = Shard(out.path).sweep(0)
    assert sw.features.shape == (80, 0) and len(sw) == 80
    np.testing.assert_array_equal(sw.region, res.region)


def _writer(vdir, scene, seed, errors=0):
    w = ShardWriter(vdir, scene)
    pts, res, cams = fake_sweep(np.random.default_rng(seed), 200, "t")
    w.add(SweepInput(f"{scene}-t", pts, cameras=cams), res)
    for i in range(errors):
        w.add_error(f"{scene}-bad{i}", "s/bad.pcd.bin", "truncated", "load")
    return w


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_committed_shard_is_replaced_whole(tmp_path, monkeypatch, exchange):
    """commit(replace=True) swaps the new shard in for the committed one (atomically with renameat2's
    RENAME_EXCHANGE, or with two renames where the filesystem cannot); the old files are gone, nothing is left
    in .tmp-*; a commit that fails midway leaves the old shard as it was."""
    from data_catalog.verify import verify_shard

    if not exchange:
        monkeypatch.setattr(shard_writer, "_rename_exchange", lambda a, b: False)
    vdir = tmp_path / "v"
    old = _writer(vdir, "scene-a", 0, errors=1).commit()
    assert _writer(vdir, "scene-a", 1).commit().status == "exists"  # without replace: never overwritten
    real = write_file

    def full_disk(path, data):
        if path.name == MANIFEST:
            raise OSError("[Errno 28] No space left on device")
        return real(path, data)

    monkeypatch.setattr(shard_writer, "write_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        _writer(vdir, "scene-a", 1).commit(replace=True)
    monkeypatch.setattr(shard_writer, "write_file", real)
    assert read_manifest(old.path) == old.manifest and verify_shard(old.path) == []
    assert tmp_dirs(vdir) == []
    new = _writer(vdir, "scene-a", 1).commit(replace=True)
    assert new.status == "replaced" and new.path == old.path
    assert read_manifest(new.path) == new.manifest != old.manifest
    assert new.manifest["counts"]["errors"] == 0 and verify_shard(new.path) == []
    assert tmp_dirs(vdir) == [] and committed_scenes(vdir) == ["scene-a"]


def test_link_shard_takes_a_shard_of_another_version_as_it_is(tmp_path):
    src = _writer(tmp_path / "v1", "scene-a", 0).commit()
    got = link_shard(src.path, tmp_path / "v2", "scene-a")
    assert got.status == "committed" and got.manifest == src.manifest
    for p in src.path.rglob("*"):
        if p.is_file():
            q = got.path / p.relative_to(src.path)
            assert os.path.samefile(p, q)
    assert link_shard(src.path, tmp_path / "v2", "scene-a").status == "exists"
    assert tmp_dirs(tmp_path / "v2") == []


def test_errors_table_levels_and_old_tables_without_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    w = _writer(tmp_path / "v", "scene-a", 0, errors=1)
    w.add_error("scene-a-t", "samples/CAM_FRONT/x.jpg", "CAM_FRONT image not found", "load", level="warning")
    with pytest.raises(ValueError, match="level"):
        w.add_error("x", "f", "r", "load", level="fatal")
    res = w.commit()
    assert res.manifest["counts"]["errors"] == 1 and res.manifest["counts"]["warnings"] == 1
    assert shard_failures(tmp_path / "v", "scene-a") == (1, 1)
    assert read_shard_tables(tmp_path / "v", ERRORS_TABLE).column("level").to_pylist() == ["error", "warning"]
    # a shard of format 1: no level column, no warnings count; its rows read as errors, which they were
    old = pa.table({k: ["t", "scene-a", "f", "load", "truncated"][i:i + 1]
                    for i, k in enumerate(("token", "scene", "file", "stage", "reason"))})
    pq.write_table(old, res.path / ERRORS_TABLE)
    man = read_manifest(res.path)
    man["counts"].pop("warnings")
    (res.path / MANIFEST).write_text(json.dumps(man))
    assert read_shard_tables(tmp_path / "v", ERRORS_TABLE).to_pylist() == [
        {"token": "t", "scene": "scene-a", "file": "f", "stage": "load", "reason": "truncated", "level": "error"}]
    assert shard_failures(tmp_path / "v", "scene-a") == (1, 0)


def test_run_records_are_never_overwritten(tmp_path):
    """Two records at the same instant (same host and pid): both kept, each whole."""
    import time

    when = 1_800_000_000.123456
    a = write_run_record(tmp_path, {"n": 1}, when=when)
    b = write_run_record(tmp_path, {"n": 2}, when=when)
    assert a != b and run_records(tmp_path) == sorted([a, b])
    assert sorted(json.loads(p.read_text())["n"] for p in (a, b)) == [1, 2]
    assert a.name.startswith(time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + ".123456Z-")
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")] == []
