"""The camera stream of RAD (region-aware distillation): per keyframe, the six camera images with their
calibration and image augmentation, plus the same point sample and region ids as the PRC stream's view 0.

:class:`CameraStream` is a :class:`train.data.stream.StoreStream` over the **keyframe** LIDAR_TOP sweeps of a store
version (the sweeps that have camera images). Its constructor, in the main process only:

1. resolves the nuScenes dataroot (``ImageConfig.dataroot``, else the one the version's ``dataset`` record
   names), opens it once with nuscenes-devkit and **checks it against the version**: the input manifest
   (:func:`data_catalog.version.input_manifest` of the tables and of the sizes of the files the preprocessing
   read, in the version's ``sweeps`` mode) is computed again and compared with the one recorded in
   ``version.json``; a different dataroot is refused (:class:`InputError` naming it and what differs: the
   tables by name, the file count, the total bytes, the missing-file count);
2. builds a picklable map sweep token -> the six image paths (relative to the dataroot, in the order of the
   shard's ``channels``) from ``sample_data -> sample -> sample['data'][channel]``, and drops the devkit, so
   DataLoader workers never open it again.

Per item (:meth:`CameraStream.load`): the point part comes from :func:`train.data.prc.load_points` with one view
(view 0, the BEV frame), then, with the **same** generator (``StoreStream.rng(item, epoch)``, after the point
sampling, so a sample depends on (seed, epoch, item) only), five uniforms per camera draw its image
augmentation (BEVFusion's scheme, :func:`draw_image_aug`); each image is decoded (``torchvision.io.decode_jpeg``
or Pillow, :attr:`ImageConfig.decoder`), resized with antialiasing (``torch.nn.functional.interpolate`` on
uint8), normalised with mean/std and cropped, flipped and rotated (:func:`warp_image`) to ``ImageConfig.size``.

Pixel convention: pixel coordinates are (u, v) = (column, row) with the **centre of pixel (i, j) at the
integer coordinates (i, j)** (the convention of the store's ``uv``, of devkit's ``view_points`` and of
OpenCV); an image of width W covers u in [-0.5, W - 0.5]. ``img_aug`` (3x3) maps an original-image pixel
(u, v, 1) to the network-input pixel in the same convention; the warp is exact for it (the resize is
``align_corners=False`` interpolation, whose pixel centres are those of this convention). So a LiDAR point
``p`` of the batch's view 0 lands at network-input pixel::

    pix ~ img_aug @ K @ lidar2cam[:3] @ inv(bev_aug) @ [p, 1]        (divide by the third coordinate)

Pixels of the network input that fall outside the resized image (padding) and masked cameras are 0 after the
normalisation (the mean colour).

A missing or unreadable image (missing file, truncated JPEG, not a JPEG, a size other than the stored
calibration's): with ``ImageConfig.missing='error'`` an :class:`InputError` naming the file; with ``'mask'``
the camera's image is zeros and ``cam_valid`` is False. A camera whose stored calibration is NaN (the sweep
lacks that camera) is masked whatever ``missing`` says. ``cameras_masked`` counts the masked cameras.

:func:`collate_rad` batches per-sweep samples (C cameras, H x W network input, B samples)::

    points        float32 (1, P, 4)     x, y, z, intensity of view 0 (the BEV frame), all scans concatenated
    batch_idx     int64   (P,)          scan of each point (0..B-1)
    region        int64   (P,)          region id, unique across the batch; -1 = semantic-less
    sample_idx    int64   (B, N+M)      indices into P: N semantic-rich then M semantic-less points per scan
    sample_valid  bool    (B, N+M)      False where the scan has no point of that kind at all
    aug           float32 (B, 1, 7)     the stored augmentation record of view 0 (shared.augment_params)
    batch_size    int                   B
    tokens        list[str]             sweep tokens
    images        float32 (B, C, 3, H, W)  normalised RGB network input (0 where masked or padded)
    cam_intrinsic float32 (B, C, 3, 3)  K of the original image (identity where the calibration is NaN)
    img_aug       float32 (B, C, 3, 3)  original-image pixel -> network-input pixel (identity without a size)
    lidar2cam     float32 (B, C, 4, 4)  original LiDAR frame -> camera frame (identity where NaN)
    cam_valid     bool    (B, C)        the camera has an image (False: masked, ignore its features)
    bev_aug       float32 (B, 4, 4)     original LiDAR frame -> view 0 (``as_matrix(aug[:, 0])``)
    cameras_masked int                  masked cameras in the batch

The first eight keys are :func:`train.data.prc.collate_prc`'s (with one view).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data_catalog.reader import open_version
from data_catalog.version import input_manifest, nuscenes_input_files
from shared.augment_params import as_matrix
from shared.errors import ConfigError, InputError
from train.config import ImageConfig
from train.data.prc import collate_prc, load_points
from train.data.stream import Item, StoreStream, check_int, check_range

#: Per-sweep arrays the camera part reads (besides the point part's ``PRC_ARRAYS``).
CAMERA_ARRAYS: tuple[str, ...] = ("cam_intrinsic", "cam_lidar2cam", "cam_size")

#: Uniform draws per camera (resize, crop bottom, crop left, flip, rotation), drawn for every camera.
DRAWS_PER_CAMERA = 5

_LIDAR = "LIDAR_TOP"


# --------------------------------------------------------------------------------------------------------------
# Image augmentation: parameters, matrix, warp
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageAug:
    """One camera's image augmentation (BEVFusion's ``ImageAug3D``): resize the (W, H) image to
    (``new_w``, ``new_h``), crop the window at (``crop_w``, ``crop_h``) of the output size (may reach outside:
    padding), flip it horizontally, rotate it by ``rotate`` degrees (counter-clockwise as displayed, PIL's
    ``Image.rotate`` sense) about its centre."""

    width: int
    height: int
    new_w: int
    new_h: int
    crop_w: int
    crop_h: int
    flip: bool
    rotate: float

    def matrix(self, size: tuple[int, int]) -> np.ndarray:
        """(3, 3) float64: original pixel (u, v, 1) -> network-input pixel of ``size`` (H, W) (module docstring's
        pixel-centre convention)."""
        sx, sy = self.new_w / self.width, self.new_h / self.height
        m = np.array([[sx, 0.0, 0.5 * sx - 0.5 - self.crop_w],
                      [0.0, sy, 0.5 * sy - 0.5 - self.crop_h],
                      [0.0, 0.0, 1.0]])
        return self.residual(size) @ m

    def residual(self, size: tuple[int, int]) -> np.ndarray:
        """(3, 3) float64: resized-image pixel -> network-input pixel, without the crop offset (flip, then
        rotation about the output's centre)."""
        f_h, f_w = size
        m = np.eye(3)
        if self.flip:
            m = np.array([[-1.0, 0.0, f_w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
        if self.rotate:
            a = math.radians(self.rotate)
            c, s = math.cos(a), math.sin(a)
            cx, cy = (f_w - 1) / 2.0, (f_h - 1) / 2.0
            rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            to_c = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
            back = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
            m = back @ rot @ to_c @ m
        return m


def draw_image_aug(u: np.ndarray, width: int, height: int, cfg: ImageConfig) -> ImageAug:
    """The augmentation of a (``width``, ``height``) image from five uniforms ``u`` in [0, 1) (BEVFusion's scheme).

    ``cfg.augment``: resize factor ``r = U(cfg.resize) * W_out / width`` (relative to the fit-width factor), new
    size ``(int(width r), int(height r))``, ``crop_h = int((1 - U(crop_bottom)) new_h) - H_out``,
    ``crop_w = int(U(0, max(0, new_w - W_out)))``, a flip with probability 1/2 when ``cfg.flip``, rotation
    ``U(-rotate, rotate)`` degrees. Otherwise: fit width (relative factor 1.0), centred horizontally,
    bottom-aligned with ``crop_bottom[0]`` cut off, no flip or rotation (``u`` unused).
    """
    f_h, f_w = cfg.size
    if cfg.augment:
        rel = cfg.resize[0] + float(u[0]) * (cfg.resize[1] - cfg.resize[0])
        bottom = cfg.crop_bottom[0] + float(u[1]) * (cfg.crop_bottom[1] - cfg.crop_bottom[0])
    else:
        rel, bottom = 1.0, cfg.crop_bottom[0]
    r = rel * f_w / width
    # + 1e-6: the fit-width size is exactly W_out (width * (W_out / width) may round to W_out - 1e-13)
    new_w, new_h = max(1, int(width * r + 1e-6)), max(1, int(height * r + 1e-6))
    crop_h = int((1.0 - bottom) * new_h) - f_h
    if cfg.augment:
        crop_w = int(float(u[2]) * max(0, new_w - f_w))
        flip = bool(cfg.flip and u[3] < 0.5)
        rotate = (2.0 * float(u[4]) - 1.0) * float(cfg.rotate)
    else:
        crop_w, flip, rotate = max(0, new_w - f_w) // 2, False, 0.0
    return ImageAug(int(width), int(height), new_w, new_h, crop_w, crop_h, flip, rotate)


def warp_image(img: torch.Tensor, aug: ImageAug, size: tuple[int, int], mean, std) -> torch.Tensor:
    """The network input of one image: ``img`` (3, H, W) uint8 RGB -> (3, size[0], size[1]) float32.

    Resize to (``aug.new_h``, ``aug.new_w``) (bilinear, antialiased, ``align_corners=False``, on uint8), normalise
    ``(x / 255 - mean) / std``, then crop (integer window, zeros outside the image), flip and rotate (bilinear
    ``grid_sample``, zeros outside) exactly as ``aug.matrix(size)``.
    """
    f_h, f_w = size
    if img.shape[1:] != (aug.height, aug.width):
        raise ValueError(f"image is {tuple(img.shape[1:])}, the augmentation was drawn for "
                         f"{(aug.height, aug.width)}")
    x = img[None]
    if (aug.new_h, aug.new_w) != (aug.height, aug.width):
        x = F.interpolate(x, size=(aug.new_h, aug.new_w), mode="bilinear", antialias=True, align_corners=False)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32).view(3, 1, 1)
    x = x[0]
    if not aug.rotate:
        out = torch.zeros((3, f_h, f_w), dtype=torch.float32)
        # output row y <- resized row y + crop_h (same for columns), where both are inside
        y0, y1 = max(0, -aug.crop_h), min(f_h, aug.new_h - aug.crop_h)
        x0, x1 = max(0, -aug.crop_w), min(f_w, aug.new_w - aug.crop_w)
        if y1 > y0 and x1 > x0:
            src = x[:, y0 + aug.crop_h:y1 + aug.crop_h, x0 + aug.crop_w:x1 + aug.crop_w]
            out[:, y0:y1, x0:x1] = src.to(torch.float32) * scale - shift
        return out.flip(-1) if aug.flip else out
    # output pixel -> resized pixel: inverse of (residual @ crop translation)
    t = aug.residual(size) @ np.array([[1.0, 0.0, -aug.crop_w], [0.0, 1.0, -aug.crop_h], [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(t)
    # only the resized pixels bilinear sampling can touch: the box of the output corners' sources (+1 px)
    corners = inv @ np.array([[0.0, f_w - 1.0, 0.0, f_w - 1.0], [0.0, 0.0, f_h - 1.0, f_h - 1.0], [1.0] * 4])
    bx0, by0 = (max(0, min(n - 1, int(math.floor(v.min())))) for v, n in ((corners[0], aug.new_w),
                                                                          (corners[1], aug.new_h)))
    bx1, by1 = (max(lo + 1, min(n, int(math.floor(v.max())) + 2)) for v, n, lo in
                ((corners[0], aug.new_w, bx0), (corners[1], aug.new_h, by0)))
    box = x[:, by0:by1, bx0:bx1]
    xf = (box.to(torch.float32) * scale - shift).contiguous()
    bw, bh = bx1 - bx0, by1 - by0
    # grid_sample (align_corners=False): normalised g = (2 q + 1) / n - 1 for pixel-centre coordinate q of the box
    a = np.array([[2.0 / bw, 0.0, (1.0 - 2.0 * bx0) / bw - 1.0], [0.0, 2.0 / bh, (1.0 - 2.0 * by0) / bh - 1.0],
                  [0.0, 0.0, 1.0]])
    m = (a @ inv).astype(np.float32)
    xs, ys = np.arange(f_w, dtype=np.float32), np.arange(f_h, dtype=np.float32)
    grid = np.empty((1, f_h, f_w, 2), np.float32)
    for k in range(2):  # separable: g_k(y, x) = m[k, 0] x + (m[k, 1] y + m[k, 2])
        np.add((xs * m[k, 0])[None, :], (ys * m[k, 1] + m[k, 2])[:, None], out=grid[0, ..., k])
    return F.grid_sample(xf[None], torch.from_numpy(grid), mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


def _short(exc: Exception) -> str:
    # torchvision prefixes its messages with "decode_jpeg, <source file>:<line>, "
    return re.sub(r"^.*?\.cpp:\d+,\s*", "", str(exc).strip()).splitlines()[0] if str(exc).strip() else repr(exc)


def decode_image(path: str | Path, decoder: str = "torchvision") -> torch.Tensor:
    """A JPEG file as (3, H, W) uint8 RGB, with ``torchvision.io.decode_jpeg`` or Pillow.

    :class:`InputError` naming the file when it is missing, truncated, not a JPEG or otherwise unreadable.
    """
    path = str(path)
    if not Path(path).is_file():
        raise InputError("camera image not found", path)
    if decoder == "torchvision":
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates it for TorchCodec; still the faster one
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputError(f"camera image is not a readable JPEG ({_short(exc)})", path) from None
    if decoder == "pillow":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.format != "JPEG":
                    raise InputError(f"camera image is not a JPEG (Pillow reads it as {im.format})", path)
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"camera image is not a readable JPEG ({exc})", path) from None
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).permute(2, 0, 1)
    raise ConfigError("images.decoder", decoder, "must be 'torchvision' or 'pillow'")


# --------------------------------------------------------------------------------------------------------------
# The dataroot check
# --------------------------------------------------------------------------------------------------------------


def manifest_differences(recorded: dict, actual: dict) -> list[str]:
    """What differs between two :func:`data_catalog.version.input_manifest` results, one phrase each (empty when
    the hashes agree): the metadata tables by name, the file count, the total bytes, the missing-file count."""
    if recorded.get("sha256") == actual.get("sha256"):
        return []
    out = []
    rt, at = recorded.get("tables"), actual.get("tables", {})
    if rt is not None:
        changed = sorted(n for n in set(rt) & set(at) if rt[n] != at[n])
        gone = sorted(set(rt) - set(at))
        new = sorted(set(at) - set(rt))
        if changed:
            out.append("metadata tables differ: " + ", ".join(changed))
        if gone:
            out.append("metadata tables missing: " + ", ".join(gone))
        if new:
            out.append("metadata tables not in the version: " + ", ".join(new))
    for key, what in (("files", "input files"), ("bytes", "total bytes of the input files"),
                      ("missing", "missing input files")):
        if key in recorded and recorded[key] != actual.get(key):
            out.append(f"{what}: {recorded[key]} recorded, {actual.get(key)} here")
    if not out:
        out.append("the sizes of some input files differ (same tables, file count, total bytes and missing count)"
                   if rt is not None else "the input manifest hash differs (the version records no details)")
    return out


def check_dataroot(nusc, dataroot: str | Path, info: dict) -> dict:
    """Compare ``dataroot`` (opened as ``nusc``) with the input manifest recorded in a store version's ``info``
    (``version.json``); returns the manifest computed here, or raises :class:`InputError` naming the dataroot and
    what differs."""
    ds = info.get("dataset", {})
    recorded = dict(ds.get("manifest") or {})
    if "sha256" not in recorded:
        recorded["sha256"] = info.get("spec", {}).get("manifest_sha256")
    nus_version = ds.get("version") or info.get("spec", {}).get("dataset_version")
    sweeps = info.get("spec", {}).get("sweeps", "keyframes")
    actual = input_manifest(dataroot, nus_version, nuscenes_input_files(nusc, sweeps))
    diff = manifest_differences(recorded, actual)
    if diff:
        raise InputError(f"this dataroot is not the one store version {info.get('id', '?')} was preprocessed from "
                         f"({nus_version}, sweeps={sweeps}): " + "; ".join(diff), dataroot)
    return actual


def version_dataroot(v, dataroot: str | Path | None = None, nusc=None, field: str = "images.dataroot"):
    """(absolute dataroot, opened devkit ``NuScenes``) of store version ``v`` (a :class:`StoreVersion`):
    ``dataroot``, else ``nusc``'s, else the one the version's ``dataset`` record names; opened (unless ``nusc`` is
    given) and checked against the version's input manifest (:func:`check_dataroot`). ``field``: the setting
    named when the version records none."""
    info = v.info
    ds = info.get("dataset", {})
    nus_version = ds.get("version") or v.spec.get("dataset_version")
    dataroot = dataroot or (nusc.dataroot if nusc is not None else None) or ds.get("dataroot")
    if not dataroot:
        raise ConfigError(field, None, f"store version {v.id} records no dataroot; set it")
    dataroot = str(Path(dataroot).resolve())
    if nusc is None:
        from shared.nuscenes_io import open_nuscenes

        nusc = open_nuscenes(dataroot, nus_version, validate=False)
    elif Path(nusc.dataroot).resolve() != Path(dataroot) or nusc.version != nus_version:
        raise ConfigError("nusc", f"{nusc.dataroot} ({nusc.version})",
                          f"must be the devkit of {dataroot} ({nus_version})")
    check_dataroot(nusc, dataroot, info)
    return dataroot, nusc


# --------------------------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------------------------


class CameraStream(StoreStream):
    """The keyframe sweeps of store version ``version`` (id or unique prefix; None: the latest) of ``store`` as
    per-sweep RAD samples (dicts, see :meth:`load`); batch them with :func:`collate_rad`.

    images: the camera settings (:class:`train.config.ImageConfig`). n_rich, n_less, point_range: the point
    sample, as :class:`train.data.prc.PRCStream`. nusc: an already opened devkit ``NuScenes`` of the dataroot
    (saves opening it again; not kept). ``tokens=`` further restricts the keyframes. The other arguments:
    :class:`train.data.stream.StoreStream`. The dataroot check and the path map: module docstring.
    """

    def __init__(self, store: str | Path, version: str | None = None, *, images: ImageConfig,
                 n_rich: int = 1024, n_less: int = 1024,
                 point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), nusc=None, **kw):
        if not isinstance(images, ImageConfig):
            raise ConfigError("images", images, "must be a train.config.ImageConfig")
        self.images = images
        self.n_rich = check_int("data.n_rich", n_rich, 0)
        self.n_less = check_int("data.n_less", n_less, 0)
        if self.n_rich + self.n_less == 0:
            raise ConfigError("data.n_rich", n_rich, "n_rich + n_less must be > 0")
        self.point_range = check_range(point_range)
        v = open_version(store, version, verify_checksums=kw.get("verify_checksums", True))
        dataroot, nusc = version_dataroot(v, images.dataroot, nusc, "images.dataroot")
        #: The nuScenes dataroot the images are read from (absolute).
        self.dataroot: str = dataroot
        cams = keyframe_image_paths(nusc)
        del nusc  # never kept: workers get the path map only
        wanted = kw.pop("tokens", None)
        keys = set(cams) if wanted is None else set(cams) & set(wanted)
        super().__init__(store, v.id, tokens=keys, **kw)
        #: sweep token -> image path per camera (relative to the dataroot; None: the sample has no such camera),
        #: in the order of the shard's ``channels``.
        self.image_paths: dict[str, tuple[str | None, ...]] = {
            it.token: tuple(cams[it.token].get(ch) for ch in self.version.scene(it.scene).channels)
            for it in self.items}

    def load(self, item: Item, epoch: int = 0) -> dict[str, Any]:
        """One keyframe's RAD sample (C cameras, (H, W) = ``images.size``): the point part of
        :func:`train.data.prc.load_points` with one view (``points`` (1, K, 4) float32, ``region`` (K,) int64,
        ``sample_idx`` (N+M,) int64, ``sample_valid`` (N+M,) bool, ``aug`` (1, 7) float32, ``token``), ``item``
        int, ``images`` torch.float32 (C, 3, H, W), ``cam_intrinsic`` (C, 3, 3), ``img_aug`` (C, 3, 3),
        ``lidar2cam`` (C, 4, 4), ``bev_aug`` (4, 4) float32 numpy, ``cam_valid`` (C,) bool, ``cameras_masked``
        int (module docstring)."""
        shard = self.shard(item.scene)
        rng = self.rng(item, epoch)
        out = load_points(shard, item.index, self.point_range, self.n_rich, self.n_less, rng, views=1,
                          where=self.version.path)
        out.update(load_cameras(shard, item.index, self.image_paths[item.token], self.dataroot, self.images, rng,
                                item.token))
        out.update(item=item.order, bev_aug=as_matrix(out["aug"][0]).astype(np.float32))
        return out


def keyframe_image_paths(nusc, lidar_tokens=None) -> dict[str, dict[str, str]]:
    """{keyframe LIDAR_TOP sweep token: {camera channel: image path relative to the dataroot}} of the devkit
    ``nusc`` (every keyframe, or those of ``lidar_tokens``), from ``sample_data -> sample -> sample['data']``."""
    wanted = None if lidar_tokens is None else set(lidar_tokens)
    cams: dict[str, dict[str, str]] = {}
    for sd in nusc.sample_data:
        if sd.get("channel") == _LIDAR and sd["is_key_frame"] and (wanted is None or sd["token"] in wanted):
            data = nusc.get("sample", sd["sample_token"])["data"]
            cams[sd["token"]] = {ch: nusc.get("sample_data", tok)["filename"] for ch, tok in data.items()
                                 if ch.startswith("CAM_")}
    return cams


def read_camera_image(dataroot: str | Path, rel: str | None, channel: str, token: str, width: int, height: int,
                      decoder: str = "torchvision") -> torch.Tensor:
    """The (3, H, W) uint8 image ``rel`` (relative to ``dataroot``) of ``channel`` for sweep ``token``;
    :class:`InputError` naming the file when the sample has no such image, it is unreadable
    (:func:`decode_image`) or its size is not the stored calibration's (``width`` x ``height``)."""
    if rel is None:
        raise InputError(f"the sample of sweep {token} has no {channel} image", dataroot)
    path = str(Path(dataroot) / rel)
    img = decode_image(path, decoder)
    if tuple(img.shape[1:]) != (height, width):
        raise InputError(f"{channel} image is {img.shape[2]}x{img.shape[1]}, the store's calibration of sweep "
                         f"{token} is for {width}x{height}", path)
    return img


def load_cameras(shard, index: int, paths, dataroot: str | Path, cfg: ImageConfig,
                 rng: np.random.Generator | None, token: str = "", image_transform=None) -> dict[str, Any]:
    """The camera part of one keyframe's sample: sweep ``index`` of ``shard`` (its stored calibration), the images
    ``paths`` (relative to ``dataroot``, one per shard channel, None: none) drawn through :func:`draw_image_aug`
    with ``DRAWS_PER_CAMERA`` uniforms per camera from ``rng`` (drawn for every camera, masked or not; None: no
    draws, only with ``cfg.augment`` off) and :func:`warp_image`; missing images follow ``cfg.missing``, NaN
    calibrations are masked (module docstring). ``image_transform(image, channel)``: applied to each decoded
    (3, H, W) uint8 image before the warp (the robustness evaluation's camera corruption), or None.

    Returns ``images`` torch.float32 (C, 3, H, W), ``cam_intrinsic`` (C, 3, 3), ``img_aug`` (C, 3, 3),
    ``lidar2cam`` (C, 4, 4) float32 numpy, ``cam_valid`` (C,) bool, ``cameras_masked`` int.
    """
    sw = shard.sweep(index, arrays=CAMERA_ARRAYS)
    ks, l2c, sizes = sw.raw["cam_intrinsic"], sw.raw["cam_lidar2cam"], sw.raw["cam_size"]
    n_cam = len(sw.channels)
    if rng is None:
        if cfg.augment:
            raise ValueError("load_cameras needs a generator when images.augment is on")
        draws = np.zeros((n_cam, DRAWS_PER_CAMERA))
    else:
        draws = rng.random((n_cam, DRAWS_PER_CAMERA))  # for every camera, masked or not
    f_h, f_w = cfg.size
    images = torch.zeros((n_cam, 3, f_h, f_w), dtype=torch.float32)
    k_out = np.tile(np.eye(3, dtype=np.float32), (n_cam, 1, 1))
    l_out = np.tile(np.eye(4, dtype=np.float32), (n_cam, 1, 1))
    a_out = np.tile(np.eye(3, dtype=np.float32), (n_cam, 1, 1))
    valid = np.zeros(n_cam, bool)
    for c in range(n_cam):
        w, h = int(sizes[c][0]), int(sizes[c][1])
        calib = bool(np.isfinite(ks[c]).all() and np.isfinite(l2c[c]).all() and w > 0 and h > 0)
        if not calib:
            continue
        k_out[c], l_out[c] = ks[c], l2c[c]
        aug = draw_image_aug(draws[c], w, h, cfg)
        a_out[c] = aug.matrix(cfg.size)
        try:
            img = read_camera_image(dataroot, paths[c], sw.channels[c], token, w, h, cfg.decoder)
        except InputError:
            if cfg.missing == "error":
                raise
            continue
        if image_transform is not None:
            img = image_transform(img, sw.channels[c])
        images[c] = warp_image(img, aug, cfg.size, cfg.mean, cfg.std)
        valid[c] = True
    return {"images": images, "cam_intrinsic": k_out, "img_aug": a_out, "lidar2cam": l_out, "cam_valid": valid,
            "cameras_masked": int(n_cam - valid.sum())}


def collate_rad(samples: list[dict]) -> dict:
    """Batch per-sweep samples (from :meth:`CameraStream.load`) into the RAD model's input (module docstring):
    :func:`train.data.prc.collate_prc` of the point part plus the stacked camera tensors."""
    if not samples:
        raise ValueError("collate_rad needs at least one sample")
    out = collate_prc(samples)
    out.update(collate_cameras(samples))
    return out


def collate_cameras(samples: list[dict]) -> dict:
    """The camera part of a batch (module docstring): ``images`` (B, C, 3, H, W), ``cam_intrinsic``, ``img_aug``,
    ``lidar2cam``, ``cam_valid``, ``bev_aug`` stacked, ``cameras_masked`` summed, from per-sample dicts holding
    :func:`load_cameras`'s keys and ``bev_aug`` (4, 4)."""

    def stack(key: str, dtype=torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples])).to(dtype)

    return dict(
        images=torch.stack([torch.as_tensor(s["images"], dtype=torch.float32) for s in samples]),
        cam_intrinsic=stack("cam_intrinsic"), img_aug=stack("img_aug"), lidar2cam=stack("lidar2cam"),
        cam_valid=stack("cam_valid", torch.bool), bev_aug=stack("bev_aug"),
        cameras_masked=int(sum(int(s["cameras_masked"]) for s in samples)))
