"""The RAD camera stream (train/data/camera.py): batch format, determinism, the image warp against its
``img_aug`` matrix, the evaluation crop, the dataroot-vs-version check, missing / unreadable images, and
DataLoader workers.

How missing and unreadable images are reached although the stream refuses a dataroot that differs from the
version's input manifest: the manifest hashes the metadata tables and the *sizes* of the input files, so

* a corrupt or truncated JPEG that keeps the file's size (zeros written over it, or its first half followed by
  zeros) passes the check and is caught when decoded (``test_unreadable_image_*``);
* a deleted image changes the manifest (its missing-file count): the check refuses the dataroot and names that
  count (``test_dataroot_with_a_missing_image_is_refused_naming_the_count``); an image that disappears *after*
  the check (storage going away under a run) reaches the missing-file path of ``load``
  (``test_image_deleted_after_the_check_*``).

Tests that change files work on a copy of the session's dataroot (``shutil.copytree``) and preprocess nothing:
the stream reads the copy through ``ImageConfig(dataroot=copy)``.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data_catalog.reader import open_version
from shared.augment_params import as_matrix
from shared.errors import InputError
from train.config import ImageConfig
from train.data.camera import (CameraStream, ImageAug, collate_rad, decode_image, draw_image_aug,
                               manifest_differences, warp_image)

RANGE = (-25.6, -25.6, -5.0, 25.6, 25.6, 3.0)
SIZE = (64, 176)  # tiny's 400x225 images: fit-width factor 0.44, as nuScenes 1600 -> 704

# torchvision 0.29 deprecates its JPEG decoding (for TorchCodec); the stream still uses it (module docstring)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _stream(train_store, images: ImageConfig | None = None, **kw) -> CameraStream:
    store, vid = train_store
    kw.setdefault("n_rich", 32)
    kw.setdefault("n_less", 16)
    kw.setdefault("point_range", RANGE)
    return CameraStream(store, vid, images=images or ImageConfig(size=SIZE), **kw)


@pytest.fixture(scope="module")
def stream(train_store) -> CameraStream:
    return _stream(train_store, shuffle=False)


@pytest.fixture
def root_copy(synth_root, tmp_path) -> Path:
    root, _ = synth_root
    dst = tmp_path / "root"
    shutil.copytree(root, dst)
    return dst


def _image_file(s: CameraStream, item_no: int = 0, cam: int = 0) -> str:
    return s.image_paths[s.items[item_no].token][cam]


def _reference(img: torch.Tensor, m: np.ndarray, size, mean, std) -> torch.Tensor:
    """The original image (normalised) sampled bilinearly at inverse(m) of the output pixel grid."""
    h, w = img.shape[1:]
    x = (img.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    ys, xs = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
    q = np.einsum("ij,jhw->ihw", np.linalg.inv(m), np.stack([xs, ys, np.ones_like(xs)]))
    g = np.stack([(2 * q[0] + 1) / w - 1, (2 * q[1] + 1) / h - 1], -1)[None].astype(np.float32)
    return F.grid_sample(x[None], torch.from_numpy(g), mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _shifted(m: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]]) @ m


def _smooth_image(h: int, w: int) -> torch.Tensor:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([127 + 100 * np.sin(xx / 9.0 + yy / 23.0), 127 + 100 * np.cos(yy / 7.0),
                    127 + 100 * np.sin((xx - yy) / 13.0)])
    return torch.from_numpy(img.round().astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------
# format, determinism
# ----------------------------------------------------------------------------------------------------------


def test_batch_shapes_and_dtypes(stream, train_store):
    store, vid = train_store
    assert len(stream) == 6  # a keyframes store: every sweep has images
    loader = DataLoader(stream, batch_size=2, collate_fn=collate_rad)
    batches = list(loader)
    assert len(batches) == 3
    b = batches[0]
    p = b["points"].shape[1]
    expect = {"points": ((1, p, 4), torch.float32), "batch_idx": ((p,), torch.int64), "region": ((p,), torch.int64),
              "sample_idx": ((2, 48), torch.int64), "sample_valid": ((2, 48), torch.bool),
              "aug": ((2, 1, 7), torch.float32), "images": ((2, 6, 3) + SIZE, torch.float32),
              "cam_intrinsic": ((2, 6, 3, 3), torch.float32), "img_aug": ((2, 6, 3, 3), torch.float32),
              "lidar2cam": ((2, 6, 4, 4), torch.float32), "cam_valid": ((2, 6), torch.bool),
              "bev_aug": ((2, 4, 4), torch.float32)}
    for key, (shape, dtype) in expect.items():
        assert tuple(b[key].shape) == shape and b[key].dtype == dtype, key
    assert b["batch_size"] == 2 and len(b["tokens"]) == 2 and b["cameras_masked"] == 0
    assert bool(b["cam_valid"].all()) and bool(torch.isfinite(b["images"]).all())
    v = open_version(store, vid)
    for i, tok in enumerate(b["tokens"]):
        it = next(it for it in stream.items if it.token == tok)
        sw = v.scene(it.scene).sweep(it.index)
        np.testing.assert_allclose(b["cam_intrinsic"][i].numpy(), sw.cam_intrinsic, rtol=1e-6)
        np.testing.assert_allclose(b["lidar2cam"][i].numpy(), sw.cam_lidar2cam, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b["bev_aug"][i].numpy(), as_matrix(sw.aug_params[0]), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(b["aug"][i, 0].numpy(), sw.aug_params[0])
    # the image paths follow the shard's channel order
    it = stream.items[0]
    channels = v.scene(it.scene).channels
    assert [Path(p).parts[1] for p in stream.image_paths[it.token]] == list(channels)


def test_same_epoch_and_item_give_the_same_sample_other_epochs_differ(stream, train_store):
    other = _stream(train_store, shuffle=False)
    item = stream.items[1]
    a, b, c = stream.load(item, 3), other.load(item, 3), stream.load(item, 4)
    assert torch.equal(a["images"], b["images"])
    for key in ("img_aug", "sample_idx", "points", "cam_valid"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["img_aug"], c["img_aug"])
    assert not torch.equal(a["images"], c["images"])
    assert not np.array_equal(a["sample_idx"], c["sample_idx"])


def test_points_are_view_zero_of_the_stored_record(stream, train_store):
    store, vid = train_store
    item = stream.items[0]
    s = stream.load(item, 0)
    sw = open_version(store, vid).scene(item.scene).sweep(item.index)
    m = as_matrix(sw.aug_params[0])
    pts = sw.xyz @ m[:3, :3].T + m[:3, 3]
    inside = sw.finite & np.all((pts >= RANGE[:3]) & (pts < RANGE[3:]), axis=1)
    np.testing.assert_allclose(s["points"][0, :, :3], pts[inside], atol=1e-4)
    np.testing.assert_array_equal(s["region"], sw.region[inside])


# ----------------------------------------------------------------------------------------------------------
# the warp and img_aug
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 176), (256, 704)])  # down- and up-sampling of the 400x225 image
@pytest.mark.parametrize("u", [(0.5, 0.5, 0.5, 0.2, 0.9), (0.0, 0.9, 1.0, 0.7, 0.1), (1.0, 0.0, 0.3, 0.2, 0.5)])
def test_warp_is_the_img_aug_mapping(size, u):
    img = _smooth_image(225, 400)
    cfg = ImageConfig(size=size, crop_bottom=(0.0, 0.2))
    aug = draw_image_aug(np.array(u), 400, 225, cfg)
    assert aug.rotate != 0 or u[4] == 0.5
    out = warp_image(img, aug, size, cfg.mean, cfg.std)
    m = aug.matrix(size)
    err = float((out - _reference(img, m, size, cfg.mean, cfg.std)).abs().mean())
    assert err < 0.025, err
    # a half-pixel error of the matrix in any direction would be seen: alignment is well under 0.5 px
    for dx, dy in ((0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5)):
        off = float((out - _reference(img, _shifted(m, dx, dy), size, cfg.mean, cfg.std)).abs().mean())
        assert off > 2 * err, (dx, dy, err, off)


def test_img_aug_composition_and_rotation_sense():
    size = (100, 200)
    aug = ImageAug(400, 200, 200, 100, 0, 0, flip=False, rotate=90.0)
    m = aug.matrix(size)
    # scale 1/2 with pixel centres: original (0.5, 0.5) -> (0, 0); the centre stays; then +90 deg (counter-
    # clockwise as displayed, y down): a pixel right of the centre moves up
    np.testing.assert_allclose(ImageAug(400, 200, 200, 100, 0, 0, False, 0.0).matrix(size) @ [0.5, 0.5, 1],
                               [0, 0, 1], atol=1e-12)
    c = np.array([99.5, 49.5, 1.0])
    np.testing.assert_allclose(aug.residual(size) @ c, c, atol=1e-9)
    np.testing.assert_allclose(aug.residual(size) @ (c + [10, 0, 0]), c + [0, -10, 0], atol=1e-9)
    flip = ImageAug(400, 200, 200, 100, 0, 0, True, 0.0).matrix(size)
    np.testing.assert_allclose(flip @ [0.5, 0.5, 1], [199, 0, 1], atol=1e-12)
    assert m.shape == (3, 3) and np.allclose(m[2], [0, 0, 1])


def test_stream_images_are_the_originals_through_img_aug(train_store):
    # nuScenes' network size on tiny's 400x225 images: upsampling (factor >= 1.5), so the antialiased resize is
    # plain bilinear and the whole warp equals one bilinear sampling of the original through inverse(img_aug)
    size = (256, 704)
    s = _stream(train_store, ImageConfig(size=size, crop_bottom=(0.0, 0.2)), shuffle=False)
    cfg = s.images
    for item in s.items[:2]:
        sample = s.load(item, 0)
        for c, rel in enumerate(s.image_paths[item.token]):
            img = decode_image(Path(s.dataroot) / rel)
            m = sample["img_aug"][c].astype(np.float64)
            ref = _reference(img, m, size, cfg.mean, cfg.std)
            err = float((sample["images"][c] - ref).abs().mean())
            off = min(float((sample["images"][c] - _reference(img, _shifted(m, dx, dy), size, cfg.mean, cfg.std))
                            .abs().mean()) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)))
            # err: the rounding of the resized uint8 image; one output pixel is 0.57 original pixels
            assert err < 0.01 and off > 2 * err, (item.token, c, err, off)


def test_lidar_pixels_map_through_img_aug_and_the_projection_chain(stream, train_store):
    store, vid = train_store
    item = stream.items[0]
    sample = stream.load(item, 2)
    sw = open_version(store, vid).scene(item.scene).sweep(item.index)
    xyz, uv, cam, pt = sw.xyz.astype(np.float64), sw.uv.astype(np.float64), sw.proj_cam, sw.proj_point
    view0 = xyz @ sample["bev_aug"][:3, :3].T.astype(np.float64) + sample["bev_aug"][:3, 3]
    inv_bev = np.linalg.inv(sample["bev_aug"].astype(np.float64))
    f_h, f_w = SIZE
    inside_total = 0
    for c in range(6):
        sel = cam == c
        if not sel.any():
            continue
        a = sample["img_aug"][c].astype(np.float64)
        pix = (np.c_[uv[sel], np.ones(sel.sum())] @ a.T)[:, :2]
        # the model's chain from the view-0 points gives the same network-input pixels
        full = a @ sample["cam_intrinsic"][c].astype(np.float64) @ sample["lidar2cam"][c][:3].astype(np.float64) \
            @ inv_bev
        h = np.c_[view0[pt[sel]], np.ones(sel.sum())] @ full.T
        np.testing.assert_allclose(h[:, :2] / h[:, 2:], pix, atol=0.5)
        inside = (pix[:, 0] > -0.5) & (pix[:, 0] < f_w - 0.5) & (pix[:, 1] > -0.5) & (pix[:, 1] < f_h - 0.5)
        inside_total += int(inside.sum())
        # the content there is the original's at uv
        img = decode_image(Path(stream.dataroot) / stream.image_paths[item.token][c])
        ref = (img.float() / 255 - torch.tensor(stream.images.mean).view(3, 1, 1)) \
            / torch.tensor(stream.images.std).view(3, 1, 1)
        w, hh = img.shape[2], img.shape[1]
        g0 = torch.from_numpy(np.stack([(2 * uv[sel][inside, 0] + 1) / w - 1,
                                        (2 * uv[sel][inside, 1] + 1) / hh - 1], -1)[None, None].astype(np.float32))
        g1 = torch.from_numpy(np.stack([(2 * pix[inside, 0] + 1) / f_w - 1,
                                        (2 * pix[inside, 1] + 1) / f_h - 1], -1)[None, None].astype(np.float32))
        orig = F.grid_sample(ref[None], g0, align_corners=False)[0, :, 0]
        net = F.grid_sample(sample["images"][c][None], g1, align_corners=False)[0, :, 0]
        if inside.sum() > 20:
            assert float((orig - net).abs().mean()) < 0.2
    assert inside_total > 100


def test_evaluation_crop_is_fit_width_centred_bottom_aligned(train_store):
    cfg = ImageConfig(size=SIZE, augment=False, crop_bottom=(0.1, 0.3))
    for u in (np.zeros(5), np.full(5, 0.99)):  # draws are ignored
        aug = draw_image_aug(u, 400, 225, cfg)
        assert (aug.new_w, aug.new_h, aug.crop_w, aug.flip, aug.rotate) == (176, 99, 0, False, 0.0)
        assert aug.crop_h == int(0.9 * 99) - 64
    wide = draw_image_aug(np.zeros(5), 400, 225, dataclasses.replace(cfg, size=(64, 100)))
    assert wide.new_w == 100  # fit width, whatever the height
    nus = draw_image_aug(np.zeros(5), 1600, 900, ImageConfig(augment=False))
    assert (nus.new_w, nus.new_h, nus.crop_w, nus.crop_h) == (704, 396, 0, 140)  # BEVFusion's eval crop
    s = _stream(train_store, cfg, shuffle=False)
    item = s.items[0]
    sample = s.load(item, 0)
    sx, sy = 176 / 400, 99 / 225
    crop_h = int(0.9 * 99) - 64
    np.testing.assert_allclose(sample["img_aug"][0], [[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5 - crop_h],
                                                      [0, 0, 1]], rtol=1e-6, atol=1e-5)
    for c in range(6):
        img = decode_image(Path(s.dataroot) / s.image_paths[item.token][c])
        resized = F.interpolate(img[None], size=(99, 176), mode="bilinear", antialias=True, align_corners=False)[0]
        want = (resized[:, crop_h:crop_h + 64].float() / 255 - torch.tensor(cfg.mean).view(3, 1, 1)) \
            / torch.tensor(cfg.std).view(3, 1, 1)
        torch.testing.assert_close(sample["images"][c], want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(s.load(item, 5)["img_aug"], sample["img_aug"])  # no augmentation: every epoch alike


# ----------------------------------------------------------------------------------------------------------
# the dataroot check
# ----------------------------------------------------------------------------------------------------------


def test_dataroot_with_a_missing_image_is_refused_naming_the_count(train_store, root_copy, stream):
    (root_copy / _image_file(stream, 0, 2)).unlink()
    with pytest.raises(InputError) as exc:
        _stream(train_store, ImageConfig(size=SIZE, dataroot=str(root_copy)))
    msg = str(exc.value)
    assert str(root_copy) in msg and "missing input files: 0 recorded, 1 here" in msg
    assert "total bytes" in msg and "metadata tables" not in msg


def test_dataroot_with_other_tables_is_refused_naming_them(train_store, root_copy):
    for name in ("sample.json", "scene.json"):  # same content, other bytes: another table hash
        p = next(root_copy.glob(f"*/{name}"))
        p.write_text(json.dumps(json.loads(p.read_text()), indent=3))
    with pytest.raises(InputError) as exc:
        _stream(train_store, ImageConfig(size=SIZE, dataroot=str(root_copy)))
    assert "metadata tables differ: sample.json, scene.json" in str(exc.value)
    assert str(root_copy) in str(exc.value)


def test_manifest_differences_name_each_field():
    rec = {"sha256": "a", "tables": {"x.json": "1", "y.json": "2"}, "files": 10, "bytes": 100, "missing": 0}
    assert manifest_differences(rec, dict(rec)) == []
    got = manifest_differences(rec, {"sha256": "b", "tables": {"x.json": "9", "z.json": "3"}, "files": 11,
                                     "bytes": 90, "missing": 1})
    assert got == ["metadata tables differ: x.json", "metadata tables missing: y.json",
                   "metadata tables not in the version: z.json", "input files: 10 recorded, 11 here",
                   "total bytes of the input files: 100 recorded, 90 here", "missing input files: 0 recorded, 1 here"]
    same_totals = manifest_differences(rec, dict(rec, sha256="c"))
    assert len(same_totals) == 1 and "sizes of some input files differ" in same_totals[0]


def test_an_identical_copy_is_accepted_and_read(train_store, root_copy, stream):
    s = _stream(train_store, ImageConfig(size=SIZE, dataroot=str(root_copy)), shuffle=False)
    assert s.dataroot == str(root_copy.resolve())
    a, b = s.load(s.items[0], 0), stream.load(stream.items[0], 0)
    assert torch.equal(a["images"], b["images"])


# ----------------------------------------------------------------------------------------------------------
# missing and unreadable images
# ----------------------------------------------------------------------------------------------------------


def _corrupt(path: Path, how: str) -> None:
    """Make ``path`` unreadable keeping its size (the input manifest hashes sizes only)."""
    raw = path.read_bytes()
    n = len(raw)
    data = {"zeros": b"\0" * n, "truncated": raw[:n // 2] + b"\0" * (n - n // 2),
            "text": (b"not a jpeg " * n)[:n]}[how]
    path.write_bytes(data)
    assert path.stat().st_size == n


@pytest.mark.parametrize("decoder", ["torchvision", "pillow"])
@pytest.mark.parametrize("how", ["zeros", "truncated", "text"])
def test_unreadable_image_is_an_error_naming_the_file(train_store, root_copy, stream, decoder, how):
    rel = _image_file(stream, 1, 3)
    _corrupt(root_copy / rel, how)
    s = _stream(train_store, ImageConfig(size=SIZE, dataroot=str(root_copy), decoder=decoder), shuffle=False)
    s.load(s.items[0], 0)  # other sweeps are fine
    with pytest.raises(InputError) as exc:
        s.load(s.items[1], 0)
    assert exc.value.path == str(root_copy.resolve() / rel)


def test_non_jpeg_image_is_refused_by_both_decoders(tmp_path):
    png = tmp_path / "x.jpg"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    for decoder in ("torchvision", "pillow"):
        with pytest.raises(InputError, match="JPEG") as exc:
            decode_image(png, decoder)
        assert exc.value.path == str(png)


def test_unreadable_image_in_mask_mode_is_masked_and_counted(train_store, root_copy, stream):
    rel = _image_file(stream, 1, 3)
    _corrupt(root_copy / rel, "truncated")
    s = _stream(train_store, ImageConfig(size=SIZE, dataroot=str(root_copy), missing="mask"), shuffle=False)
    sample = s.load(s.items[1], 0)
    assert sample["cam_valid"].tolist() == [True, True, True, False, True, True]
    assert sample["cameras_masked"] == 1 and not bool(sample["images"][3].any())
    good = stream.load(stream.items[1], 0)
    for c in (0, 1, 2, 4, 5):
        assert torch.equal(sample["images"][c], good["images"][c])
    np.testing.assert_array_equal(sample["img_aug"], good["img_aug"])  # the draws do not depend on masking
    b = collate_rad([s.load(s.items[0], 0), sample])
    assert b["cameras_masked"] == 1 and b["cam_valid"].sum() == 11


def test_image_deleted_after_the_check_errors_or_masks(train_store, root_copy, stream):
    err = _stream(train_store, ImageConfig(size=SIZE, dataroot=str(root_copy)), shuffle=False)
    mask = _stream(train_store, ImageConfig(size=SIZE, dataroot=str(root_copy), missing="mask"), shuffle=False)
    rel = _image_file(stream, 2, 0)
    (root_copy / rel).unlink()
    with pytest.raises(InputError, match="not found") as exc:
        err.load(err.items[2], 0)
    assert exc.value.path == str(root_copy.resolve() / rel)
    sample = mask.load(mask.items[2], 0)
    assert sample["cam_valid"].tolist() == [False] + [True] * 5 and sample["cameras_masked"] == 1


def test_camera_with_nan_calibration_is_masked(train_store, monkeypatch):
    s = _stream(train_store, shuffle=False)  # missing='error': a camera the sweep lacks is no error
    real = s.shard

    class Lacking:
        def __init__(self, shard):
            self._shard = shard

        def sweep(self, i, arrays=None):
            sw = self._shard.sweep(i, arrays)
            if "cam_lidar2cam" not in sw.raw:
                return sw
            raw = dict(sw.raw)
            for key in ("cam_lidar2cam", "cam_intrinsic"):
                raw[key] = raw[key].copy()
                raw[key][4] = np.nan
            return dataclasses.replace(sw, raw=raw)

    monkeypatch.setattr(s, "shard", lambda scene: Lacking(real(scene)))
    sample = s.load(s.items[0], 0)
    assert sample["cam_valid"].tolist() == [True] * 4 + [False, True] and sample["cameras_masked"] == 1
    assert not bool(sample["images"][4].any())
    np.testing.assert_array_equal(sample["lidar2cam"][4], np.eye(4))
    np.testing.assert_array_equal(sample["cam_intrinsic"][4], np.eye(3))
    assert np.isfinite(sample["lidar2cam"]).all()


# ----------------------------------------------------------------------------------------------------------
# decoders, workers, keyframes
# ----------------------------------------------------------------------------------------------------------


def test_decoders_agree(stream):
    p = Path(stream.dataroot) / _image_file(stream, 0, 0)
    a, b = decode_image(p, "torchvision"), decode_image(p, "pillow")
    assert a.shape == b.shape == (3, 225, 400) and a.dtype == b.dtype == torch.uint8
    assert float((a.float() - b.float()).abs().mean()) < 1.0


def test_dataloader_two_workers_give_the_same_samples_as_zero(train_store):
    s = _stream(train_store)
    assert b"NuScenes" not in pickle.dumps(s)  # the devkit is not kept: workers get the path map only
    s.set_epoch(1)

    def by_token(workers):
        out = {}
        for b in DataLoader(s, batch_size=2, collate_fn=collate_rad, num_workers=workers):
            for i, tok in enumerate(b["tokens"]):
                out[tok] = (b["images"][i], b["img_aug"][i], b["sample_idx"][i] - (b["batch_idx"] < i).sum(),
                            b["cam_valid"][i])
        return out

    zero, two = by_token(0), by_token(2)
    assert set(zero) == set(two) and len(zero) == 6
    for tok in zero:
        for x, y in zip(zero[tok], two[tok]):
            assert torch.equal(x, y), tok


def test_tokens_restrict_the_keyframes(train_store, stream):
    toks = [stream.items[i].token for i in (0, 4)]
    s = _stream(train_store, tokens=toks + ["not-a-token"])
    assert sorted(it.token for it in s.items) == sorted(toks)
    assert set(s.image_paths) == set(toks)


@pytest.mark.slow
def test_all_sweeps_store_gives_keyframes_only(synth_root, tmp_path):
    from preprocess.run import run

    root, version = synth_root
    summary = run(root, version, tmp_path / "store", sweeps="all", workers=0, progress=False, log=None)
    v = open_version(tmp_path / "store", summary.version)
    total = sum(len(v.scene(n).tokens) for n in v.scenes())
    s = CameraStream(tmp_path / "store", summary.version, images=ImageConfig(size=SIZE), n_rich=8, n_less=8,
                     point_range=RANGE)
    assert len(s) == 6 < total
    sample = s.load(s.items[0], 0)
    assert bool(sample["cam_valid"].all())
