"""Camera corruptions after ImageNet-C (Hendrycks & Dietterich, ICLR 2019, github hendrycks/robustness and the
``imagecorruptions`` package), nuScenes-C (Dong et al., CVPR 2023, github thu-ml/3D_Corruptions_AD) and RoboBEV
(Xie et al., 2023, github Daniel-xsy/RoboBEV). Formulas, tables, sources and our changes: docs/robustness.md.

Images are what :func:`train.data.camera.decode_image` yields: a ``torch.uint8`` tensor (3, H, W), RGB. Every
function returns a new tensor of the same shape and dtype (the input is not modified); arithmetic is done in
float64 on [0, 1] and rounded back (``floor(255 x + 1e-6)``: ImageNet-C's ``uint8`` cast after clipping to
[0, 1], the 1e-6 absorbing float error). Random numbers come from the numpy ``rng`` (so a seed fixes the result on any device).
"""
from __future__ import annotations

import numpy as np
import torch

from shared.errors import InputError
from train.eval.robustness.common import check_rng, check_severity

#: ImageNet-C brightness: V channel (HSV) + c.
BRIGHTNESS_SHIFTS = (0.1, 0.2, 0.3, 0.4, 0.5)
#: RoboBEV 'Dark': range scaled to [0, c] with gamma 2, then Poisson (photons c_p) and Gaussian (std c_g) noise.
LOW_LIGHT_LEVELS = (0.60, 0.50, 0.40, 0.30, 0.20)
LOW_LIGHT_PHOTONS = (600, 250, 120, 50, 30)
LOW_LIGHT_READ_STD = (0.008, 0.012, 0.018, 0.026, 0.038)
#: ImageNet-C Gaussian noise std (on [0, 1]).
GAUSSIAN_NOISE_STDS = (0.08, 0.12, 0.18, 0.26, 0.38)
#: nuScenes-C motion blur (left-right): kernel length ``int(c * W * 0.5)`` px, c = 0.02 * severity.
MOTION_BLUR_FRACTIONS = (0.02, 0.04, 0.06, 0.08, 0.10)
#: Occlusion: share of the image covered, in ``severity`` black rectangles (our definition, see the docs).
OCCLUSION_AREAS = (0.05, 0.10, 0.15, 0.20, 0.25)


def _check_image(image, where: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        desc = (f"{type(image).__name__} {tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor)
                else type(image).__name__)
        raise InputError(f"{where}: expected a torch.uint8 tensor (3, H, W) as decode_image gives, got {desc}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise InputError(f"{where}: empty image {tuple(image.shape)}")
    return image


def _to01(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().numpy().astype(np.float64) / 255.0


def _from01(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    out = np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 1e-6).astype(np.uint8)  # 1e-6: float error, not a shift
    return torch.from_numpy(out).to(like.device)


def brightness(image, severity: int, rng: np.random.Generator) -> torch.Tensor:
    """ImageNet-C brightness: in HSV, ``V' = min(V + c, 1)`` with H, S kept, ``c = BRIGHTNESS_SHIFTS[s - 1]``.

    Exactly, per pixel: ``rgb' = rgb * V' / V`` (H and S fix ``rgb / V``), and a black pixel (V = 0) becomes the
    grey ``c``. ``rng`` is unused (deterministic), taken for the common signature."""
    img, s = _check_image(image), check_severity(severity)
    check_rng(rng)
    x = _to01(img)
    v = x.max(axis=0, keepdims=True)
    v2 = np.minimum(v + BRIGHTNESS_SHIFTS[s - 1], 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(v > 0, x * (v2 / np.where(v > 0, v, 1.0)), v2)
    return _from01(y, img)


def low_light(image, severity: int, rng: np.random.Generator) -> torch.Tensor:
    """Low light ('Dark' of RoboBEV's nuScenes-C): ``y = ((x - min x) / (max x - min x))^2 * c`` (c =
    ``LOW_LIGHT_LEVELS[s-1]``), quantised to uint8, then shot noise ``Poisson(y * c_p) / c_p`` (clipped to [0, 1],
    quantised) and read noise ``+ N(0, c_g^2)`` (clipped, quantised)."""
    img, s, rng = _check_image(image), check_severity(severity), check_rng(rng)
    x = _to01(img)
    lo, hi = x.min(), x.max()
    y = ((x - lo) / (hi - lo)) ** 2 * LOW_LIGHT_LEVELS[s - 1] if hi > lo else np.zeros_like(x)
    y = np.floor(np.clip(y, 0, 1) * 255.0) / 255.0
    c_p = LOW_LIGHT_PHOTONS[s - 1]
    y = np.floor(np.clip(rng.poisson(y * c_p) / c_p, 0, 1) * 255.0) / 255.0
    y = y + rng.normal(0.0, LOW_LIGHT_READ_STD[s - 1], size=y.shape)
    return _from01(y, img)


def camera_gaussian_noise(image, severity: int, rng: np.random.Generator) -> torch.Tensor:
    """ImageNet-C Gaussian noise: ``x + N(0, c^2)`` on [0, 1], ``c = GAUSSIAN_NOISE_STDS[s - 1]``, clipped."""
    img, s, rng = _check_image(image), check_severity(severity), check_rng(rng)
    x = _to01(img)
    return _from01(x + rng.normal(0.0, GAUSSIAN_NOISE_STDS[s - 1], size=x.shape), img)


def motion_blur(image, severity: int, rng: np.random.Generator) -> torch.Tensor:
    """Horizontal motion blur (nuScenes-C ``ImageMotionBlurLeftRight``: imgaug ``MotionBlur(k, angle=90)``): the
    mean over a centred horizontal line of ``k = max(1, int(c * W * 0.5))`` pixels, ``c = MOTION_BLUR_FRACTIONS[s-1]``,
    the border reflected (OpenCV's BORDER_REFLECT_101, as imgaug's filter). ``rng`` unused (deterministic)."""
    img, s = _check_image(image), check_severity(severity)
    check_rng(rng)
    w = img.shape[2]
    k = max(1, int(MOTION_BLUR_FRACTIONS[s - 1] * w * 0.5))
    k = min(k, 2 * w - 1)
    x = img.detach().cpu().to(torch.float64) / 255.0
    left, right = (k - 1) // 2, k // 2
    if max(left, right) >= w:  # reflect padding needs pad < W
        left, right = min(left, w - 1), min(right, w - 1)
        k = left + right + 1
    xp = torch.nn.functional.pad(x, (left, right), mode="reflect") if k > 1 else x
    c = torch.cumsum(torch.nn.functional.pad(xp, (1, 0)), dim=2)
    y = (c[:, :, k:] - c[:, :, :-k]) / k
    return _from01(y.numpy(), img)


def occlusion_patches(image, severity: int, rng: np.random.Generator) -> torch.Tensor:
    """Occlusion (mud, stickers, a leaf): ``severity`` black rectangles covering ``OCCLUSION_AREAS[s - 1]`` of the
    image between them. The width is cut into ``severity`` equal strips with one patch in each (so patches never
    overlap and the covered share is exact up to rounding): a square of side ``sqrt(A H W / s)`` where it fits,
    else as wide as the strip and as tall as the area needs; its position in its strip is uniform."""
    img, s, rng = _check_image(image), check_severity(severity), check_rng(rng)
    _, h, w = img.shape
    area = OCCLUSION_AREAS[s - 1] * h * w / s
    strip = w // s if w >= s else w
    side = np.sqrt(area)
    pw = int(round(min(side, strip)))
    ph = int(round(min(h, area / max(pw, 1))))
    out = img.clone()
    for i in range(s if w >= s else 1):
        x0 = i * strip + int(rng.integers(0, strip - pw + 1))
        y0 = int(rng.integers(0, h - ph + 1))
        out[:, y0:y0 + ph, x0:x0 + pw] = 0
    return out
