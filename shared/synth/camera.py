"""Camera images rendered from the same 3-D world the LiDAR sees (painter's algorithm with OpenCV).

Sky gradient, then the ground as polygons in road coordinates (asphalt, lane paint, curb/sidewalk,
terrain), then every primitive's camera-facing faces sorted far to near; polygons are clipped at a near plane
before projection. Colours: one hue per class (see :data:`shared.synth.world.CLASS_COLOURS`), shaded per
instance and by face orientation.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from shared.synth.config import NATIVE_IMAGE_WH
from shared.synth.world import R_HW, R_LANE, R_NLANE, R_SW, ground_profile, road_xy

NEAR = 0.3
_LIGHT = np.array([0.4, 0.3, 0.87])
_LIGHT = _LIGHT / np.linalg.norm(_LIGHT)
_GROUND_COLOURS = {0: (78, 80, 82), 1: (225, 225, 225), 2: (150, 155, 160), 3: (60, 110, 95)}


def scaled_intrinsic(fx_cx_fy_cy: tuple[float, ...], width: int, height: int) -> np.ndarray:
    """The 3x3 intrinsic matrix of a native 1600x900 nuScenes camera scaled to width x height."""
    sx, sy = width / NATIVE_IMAGE_WH[0], height / NATIVE_IMAGE_WH[1]
    fx, cx, fy, cy = fx_cx_fy_cy
    return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


def _clip_near(pc: np.ndarray) -> np.ndarray:
    """Clip a polygon (k, 3) in camera coordinates to z >= NEAR (Sutherland-Hodgman)."""
    out = []
    k = len(pc)
    for i in range(k):
        a, b = pc[i], pc[(i + 1) % k]
        ina, inb = a[2] >= NEAR, b[2] >= NEAR
        if ina:
            out.append(a)
        if ina != inb:
            f = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + f * (b - a))
    return np.array(out).reshape(-1, 3)


class _Canvas:
    def __init__(self, global2cam: np.ndarray, K: np.ndarray, width: int, height: int):
        self.R, self.t, self.K = global2cam[:3, :3], global2cam[:3, 3], K
        self.w, self.h = width, height
        self.img = np.zeros((height, width, 3), np.uint8)

    def to_cam(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.R.T + self.t

    def poly(self, pts_global: np.ndarray, colour) -> None:
        self.poly_cam(self.to_cam(pts_global), colour)

    def polys(self, corners: np.ndarray, colours: np.ndarray) -> None:
        """Draw polygons (N, k, 3) global in order, skipping those behind the camera or outside the image."""
        pc = corners @ self.R.T + self.t
        z = pc[..., 2]
        front = (z >= NEAR).all(axis=1)
        some = (z >= NEAR).any(axis=1)
        uv = pc[..., :2] / np.maximum(z, NEAR)[..., None]
        uv = uv * np.array([self.K[0, 0], self.K[1, 1]]) + np.array([self.K[0, 2], self.K[1, 2]])
        outside = ((uv[..., 0].max(1) < 0) | (uv[..., 0].min(1) >= self.w) | (uv[..., 1].max(1) < 0)
                   | (uv[..., 1].min(1) >= self.h))
        for i in np.nonzero(some & ~(front & outside))[0]:
            col = tuple(int(c) for c in colours[i])
            if front[i]:
                q = np.clip(uv[i], -1e5, 1e5)
                cv2.fillConvexPoly(self.img, np.round(q * 16).astype(np.int32), col, lineType=cv2.LINE_AA, shift=4)
            else:
                self.poly_cam(pc[i], col)

    def poly_cam(self, pc: np.ndarray, colour) -> None:
        pc = _clip_near(pc)
        if len(pc) < 3:
            return
        uv = pc[:, :2] / pc[:, 2:3] * np.array([self.K[0, 0], self.K[1, 1]]) + np.array([self.K[0, 2],
                                                                                           self.K[1, 2]])
        if (uv[:, 0].max() < 0 or uv[:, 0].min() >= self.w or uv[:, 1].max() < 0 or uv[:, 1].min() >= self.h):
            return
        uv = np.clip(uv, -1e5, 1e5)
        cv2.fillConvexPoly(self.img, np.round(uv * 16).astype(np.int32), tuple(int(c) for c in colour),
                           lineType=cv2.LINE_AA, shift=4)


_NV = 10  # vertices per face polygon (quads are padded by repeating their last corner)
_CYL_K = 10


def _pad(poly: np.ndarray) -> np.ndarray:
    """Pad polygons (..., k, 3) to _NV vertices by repeating the last one."""
    k = poly.shape[-2]
    if k == _NV:
        return poly
    return np.concatenate([poly, np.repeat(poly[..., -1:, :], _NV - k, axis=-2)], axis=-2)


def _sphere_template() -> tuple[np.ndarray, np.ndarray]:
    lat = np.linspace(-np.pi / 2, np.pi / 2, 5)
    lon = np.linspace(0, 2 * np.pi, 9)
    quads, normals = [], []
    for i in range(4):
        for j in range(8):
            q = [(lat[a], lon[b]) for a, b in ((i, j), (i, j + 1), (i + 1, j + 1), (i + 1, j))]
            quads.append([[math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)] for la, lo in q])
            la, lo = 0.5 * (lat[i] + lat[i + 1]), 0.5 * (lon[j] + lon[j + 1])
            normals.append([math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)])
    return np.array(quads), np.array(normals)


_SPHERE_QUADS, _SPHERE_NORMALS = _sphere_template()


def primitive_faces(prims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces of primitives (M, 10): corners (F, 10, 3) (padded polygons), outward normals (F, 3) and the
    primitive index of each face (F,). Boxes give 6 faces, cylinders 10 sides and a top, spheres 32 patches."""
    corners, normals, owner = [], [], []
    idx = np.nonzero(prims[:, 0] == 0)[0]
    if idx.size:
        b = prims[idx]
        co, si = np.cos(b[:, 7]), np.sin(b[:, 7])
        z0 = np.zeros_like(co)
        ex = np.stack([co, si, z0], 1)
        ey = np.stack([-si, co, z0], 1)
        ez = np.stack([z0, z0, z0 + 1], 1)
        c = b[:, 1:4]
        half = {0: b[:, 4:5], 1: b[:, 5:6], 2: b[:, 6:7]}
        axes = {0: ex, 1: ey, 2: ez}
        for ax, u, v in ((0, 1, 2), (1, 0, 2), (2, 0, 1)):
            hu, hv = half[u] * axes[u], half[v] * axes[v]
            for sg in (-1.0, 1.0):
                fc = c + sg * half[ax] * axes[ax]
                quad = np.stack([fc - hu - hv, fc + hu - hv, fc + hu + hv, fc - hu + hv], axis=1)
                corners.append(_pad(quad))
                normals.append(sg * axes[ax])
                owner.append(idx)
    idx = np.nonzero(prims[:, 0] == 1)[0]
    if idx.size:
        cy = prims[idx]
        ang = np.linspace(0, 2 * np.pi, _CYL_K, endpoint=False)
        rx = cy[:, 1:2] + cy[:, 4:5] * np.cos(ang)
        ry = cy[:, 2:3] + cy[:, 4:5] * np.sin(ang)
        zlo = np.repeat(cy[:, 3:4] - cy[:, 5:6], _CYL_K, 1)
        zhi = np.repeat(cy[:, 3:4] + cy[:, 5:6], _CYL_K, 1)
        for i in range(_CYL_K):
            j = (i + 1) % _CYL_K
            quad = np.stack([np.stack([rx[:, i], ry[:, i], zlo[:, i]], 1), np.stack([rx[:, j], ry[:, j], zlo[:, j]], 1),
                             np.stack([rx[:, j], ry[:, j], zhi[:, j]], 1), np.stack([rx[:, i], ry[:, i], zhi[:, i]], 1)],
                            axis=1)
            mid = ang[i] + np.pi / _CYL_K
            corners.append(_pad(quad))
            normals.append(np.repeat([[math.cos(mid), math.sin(mid), 0.0]], idx.size, 0))
            owner.append(idx)
        corners.append(np.stack([rx, ry, zhi], axis=2))
        normals.append(np.repeat([[0.0, 0.0, 1.0]], idx.size, 0))
        owner.append(idx)
    idx = np.nonzero(prims[:, 0] == 2)[0]
    if idx.size:
        sp = prims[idx]
        q = sp[:, None, None, 1:4] + sp[:, None, None, 4:5] * _SPHERE_QUADS[None]  # (n, 32, 4, 3)
        corners.append(_pad(q.reshape(-1, 4, 3)))
        normals.append(np.tile(_SPHERE_NORMALS, (idx.size, 1)))
        owner.append(np.repeat(idx, len(_SPHERE_QUADS)))
    if not corners:
        return np.zeros((0, _NV, 3)), np.zeros((0, 3)), np.zeros(0, np.int64)
    return np.concatenate(corners), np.concatenate(normals), np.concatenate(owner)


def ground_polygons(P: np.ndarray, s_c: float, s_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Ground polygons around arc length s_c (far ones coarser), in drawing order: corners (N, 4, 3) float64
    global, colours (N, 3) uint8."""
    hw, sw = P[R_HW], P[R_SW]
    ds = np.concatenate([np.arange(-150, -30, 10.0), np.arange(-30, 30, 2.0), np.arange(30, 151, 10.0)])
    ss = np.clip(s_c + ds, s_range[0] - 150, s_range[1] + 150)
    ss = np.unique(ss)
    lanes = [i * P[R_LANE] for i in range(1, int(P[R_NLANE]))]
    bands = sorted({0.0, hw - 1e-3, hw + 1e-3, hw + sw, hw + sw + 10, hw + sw + 40, 200.0} | set(lanes))
    bands = [-b for b in reversed(bands) if b > 0] + bands
    out = []
    for i in range(len(ss) - 1):
        for k in range(len(bands) - 1):
            d0, d1 = bands[k], bands[k + 1]
            dm = 0.5 * (d0 + d1)
            if d1 - d0 < 0.01:
                continue
            _, mat = ground_profile(P, 0.5 * (ss[i] + ss[i + 1]), dm)
            mat = 0 if mat == 1 else mat
            corners = []
            for s, d in ((ss[i], d0), (ss[i + 1], d0), (ss[i + 1], d1), (ss[i], d1)):
                dd = d + (1e-3 if d < dm else -1e-3)  # the height on this tile's side of a curb
                x, y = road_xy(P, s, dd)
                corners.append((x, y, ground_profile(P, s, dd)[0]))
            col = _GROUND_COLOURS[mat]
            if mat == 3:
                col = tuple(int(c * (0.9 + 0.1 * math.sin(0.7 * ss[i] + d0))) for c in col)
            out.append((np.array(corners), col))
    # curb faces: vertical quads between the road edge and the sidewalk
    for i in range(len(ss) - 1):
        for side in (-1.0, 1.0):
            d_in, d_out = side * (hw - 1e-3), side * (hw + 1e-3)
            corners = []
            for s, d in ((ss[i], d_in), (ss[i + 1], d_in), (ss[i + 1], d_out), (ss[i], d_out)):
                x, y = road_xy(P, s, side * hw)
                corners.append((x, y, ground_profile(P, s, d)[0]))
            out.append((np.array(corners), (120, 125, 130)))
    # lane paint: centre line and dashed lane dividers (quads slightly above the road)
    for s in np.arange(math.floor((s_c - 60) / 9) * 9, s_c + 60, 9.0):
        for d in [0.0] + lanes + [-x for x in lanes]:
            w = 0.12
            corners = []
            for ss_, dd in ((s, d - w), (s + 3.0, d - w), (s + 3.0, d + w), (s, d + w)):
                x, y = road_xy(P, ss_, dd)
                corners.append((x, y, ground_profile(P, ss_, dd)[0] + 0.01))
            out.append((np.array(corners), _GROUND_COLOURS[1]))
    return np.stack([c for c, _ in out]), np.array([c for _, c in out], dtype=np.uint8)


def render_image(ground: tuple[np.ndarray, np.ndarray], prims: np.ndarray, colours: np.ndarray,
                 cam2global: np.ndarray, K: np.ndarray, width: int, height: int,
                 noise: np.ndarray | None = None) -> np.ndarray:
    """A BGR uint8 image (height, width, 3) of the world seen by a camera.

    ``ground``: :func:`ground_polygons`; ``prims`` (M, 10) float64 and ``colours`` (M, 3) uint8 as
    :meth:`World.primitives`; ``cam2global`` (4, 4) float64 the camera pose (x right, y down, z forward);
    ``K`` (3, 3) the intrinsic matrix; ``noise`` an int16 (h, w, 3) image-noise tile, repeated over the image.
    """
    g2c = np.eye(4)
    g2c[:3, :3] = cam2global[:3, :3].T
    g2c[:3, 3] = -cam2global[:3, :3].T @ cam2global[:3, 3]
    cv = _Canvas(g2c, K, width, height)
    # sky: gradient from the horizon up, using the camera's tilt
    rows = np.arange(height, dtype=np.float64)
    up = (rows - K[1, 2]) / K[1, 1]
    f = np.clip(0.5 - up, 0, 1)[:, None]
    sky = (np.array([235, 205, 170]) * (1 - f) + np.array([200, 150, 95]) * f).astype(np.uint8)
    cv.img[:] = sky[:, None, :]
    cam_pos = cam2global[:3, 3]
    cv.polys(*ground)
    # primitives, far to near; back faces culled (each primitive is convex, so its front faces do not overlap)
    if prims.shape[0]:
        dist = np.linalg.norm(prims[:, 1:4] - cam_pos, axis=1)
        corners, normals, owner = primitive_faces(prims)
        facing = np.einsum("fi,fi->f", corners[:, 0] - cam_pos, normals) < 0
        near_enough = dist[owner] < 150
        keep = np.nonzero(facing & near_enough)[0]
        keep = keep[np.argsort(-dist[owner[keep]], kind="stable")]
        shade = 0.45 + 0.55 * np.clip(normals[keep] @ _LIGHT, 0, None)
        cols = np.clip(colours[owner[keep]] * shade[:, None], 0, 255).astype(np.uint8)
        cv.polys(corners[keep], cols)
    if noise is None:
        return cv.img
    reps = (-(-height // noise.shape[0]), -(-width // noise.shape[1]), 1)
    img = cv.img.astype(np.int16) + np.tile(noise, reps)[:height, :width]
    return np.clip(img, 0, 255).astype(np.uint8)
