"""Write a synthetic nuScenes-format dataroot: tables, LiDAR sweeps, camera images, map rasters and the map
expansion."""
from __future__ import annotations

import itertools
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pyquaternion import Quaternion
from scipy.spatial.transform import Rotation, Slerp

from shared.errors import InputError
from shared.pointcloud import save_points
from shared.records import CAMERAS
from shared.synth.camera import ground_polygons, render_image, scaled_intrinsic
from shared.synth.config import CAMERA_RIG, LIDAR2EGO, SynthConfig, resolve_config
from shared.synth.lidar import AZIMUTH_START, HIT_PRIM, cast_sweep, to_points
from shared.synth.map_expansion import SceneMap, expansion_bytes, moved_map, scene_map
from shared.synth.tables import (
    LOCATIONS,
    constant_tables,
    scene_names,
    token,
    visibility_token,
    write_tables,
)
from shared.synth.world import (
    CLASS_RANGE,
    DETECTION_CATEGORY,
    DETECTION_NAME,
    World,
    add_anchors,
    location_raster,
    make_world,
    max_extent,
)

#: First timestamp (microseconds) of scene 0; later scenes start an hour apart.
BASE_TIMESTAMP = 1_532_402_927_000_000


def _transform(q_wxyz, t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Quaternion(q_wxyz).rotation_matrix
    m[:3, 3] = t
    return m


def _quat(m: np.ndarray) -> list[float]:
    q = Rotation.from_matrix(m[:3, :3]).as_quat()  # x y z w
    q = np.array([q[3], q[0], q[1], q[2]])
    if q[0] < 0:
        q = -q
    return [float(v) for v in q]


def _yaw_quat(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (R^T, -R^T t); cheaper and better conditioned than a general inverse."""
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


LIDAR2EGO_M = _transform(*LIDAR2EGO)
EGO2LIDAR_M = rigid_inverse(LIDAR2EGO_M)


def camera_fire_fraction(channel: str) -> float:
    """Fraction (0..1) of the LiDAR revolution at which a camera fires (the beam crosses its optical axis).

    nuScenes cameras are triggered when the top LiDAR sweeps across the centre of their field of view.
    """
    q, _, _ = CAMERA_RIG[channel]
    axis = Quaternion(q).rotation_matrix[:, 2]  # optical axis in the ego frame
    yaw_cam = math.atan2(axis[1], axis[0])
    start_ego = AZIMUTH_START - math.pi / 2  # lidar-frame azimuth -> ego-frame azimuth
    return ((start_ego - yaw_cam) % (2 * math.pi)) / (2 * math.pi)


@dataclass
class _Tables:
    rows: dict[str, list[dict]]

    def add(self, table: str, **row) -> str:
        self.rows[table].append(row)
        return row.get("token", "")


def _link(records: list[dict]) -> None:
    for a, b in itertools.pairwise(records):
        a["next"], b["prev"] = b["token"], a["token"]


def _lidar_poses(world: World, t_end: float, period: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """lidar2global (n, 4, 4) for the columns of the revolution ending at t_end, and at t_end (4, 4)."""
    p0 = world.ego_pose(t_end - period) @ LIDAR2EGO_M
    p1 = world.ego_pose(t_end) @ LIDAR2EGO_M
    f = (np.arange(n) + 0.5) / n
    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([p0[:3, :3], p1[:3, :3]])))
    out = np.repeat(np.eye(4)[None], n, axis=0)
    out[:, :3, :3] = slerp(f).as_matrix()
    out[:, :3, 3] = p0[:3, 3] + f[:, None] * (p1[:3, 3] - p0[:3, 3])
    return out, p1


def _points_in_box(points: np.ndarray, centre: np.ndarray, size_wlh, yaw: float) -> int:
    """Number of points (N, 3) inside a box (devkit convention: size w, l, h; x along l)."""
    d = points - centre
    c, s = math.cos(yaw), math.sin(yaw)
    lx = c * d[:, 0] + s * d[:, 1]
    ly = -s * d[:, 0] + c * d[:, 1]
    w, l, h = size_wlh
    return int(np.count_nonzero((np.abs(lx) <= l / 2) & (np.abs(ly) <= w / 2) & (np.abs(d[:, 2]) <= h / 2)))


#: LiDAR returns (noise-free rays in the check cast) an object needs for its class to count as seen.
MIN_SEEN_RAYS = 5
#: Rounds of anchor placement per scene (a round adds an anchor for each class still unseen).
ANCHOR_ROUNDS = 8


def seen_classes(world: World, key_times, cfg: SynthConfig) -> dict[str, float]:
    """Detection classes the keyframe sweeps see, each with the first keyframe time (s) that sees it: some object
    of the class takes at least :data:`MIN_SEEN_RAYS` first returns of the sweep ending at that time (cast as in
    :func:`_write_scene`, before noise and dropouts) while its centre lies within devkit's class range (less
    1 m) of the ego vehicle. Stops casting once every class is seen."""
    period = 1.0 / cfg.lidar_hz
    n = len(world.agents)
    seen: dict[str, float] = {}
    for t in key_times:
        t = float(t)
        poses, _ = _lidar_poses(world, t, period, cfg.n_azimuth)
        prims, _ = world.primitives(t - period / 2)
        rays = cast_sweep(world.road, prims, n, poses, cfg.max_range)
        agent = prims[rays.prim[rays.kind == HIT_PRIM], 9].astype(np.int64)
        hits = np.bincount(agent[agent >= 0], minlength=n)
        ego_xy = world.ego_pose(t)[:2, 3]
        for i in np.nonzero(hits >= MIN_SEEN_RAYS)[0]:
            name = DETECTION_NAME[world.agents[i].category]
            dist = np.hypot(*(world.agent_pose(int(i), t)[0][:2] - ego_xy))
            if name not in seen and dist <= CLASS_RANGE[name] - 1.0:
                seen[name] = t
        if len(seen) == len(CLASS_RANGE):
            break
    return seen


def ensure_all_classes(world: World, rng: np.random.Generator, key_times,
                       cfg: SynthConfig) -> tuple[World, set[str]]:
    """The world with anchors (:func:`shared.synth.world.add_anchors`) added until the keyframe sweeps see every
    detection class within its class range (:func:`seen_classes`), and the classes still unseen after
    :data:`ANCHOR_ROUNDS` rounds (normally none).

    After the first full check, a round re-casts only the keyframes that saw a class before (a new anchor may
    hide it) and those the new anchors were placed for; a class no longer seen there counts as missing again.
    """
    seen = seen_classes(world, key_times, cfg)
    for _ in range(ANCHOR_ROUNDS):
        missing = [c for c in CLASS_RANGE if c not in seen]
        if not missing:
            break
        world, targets = add_anchors(world, rng, [DETECTION_CATEGORY[c] for c in missing], key_times)
        seen = seen_classes(world, sorted(set(seen.values()) | set(targets)), cfg)
    return world, {c for c in CLASS_RANGE if c not in seen}


@dataclass(frozen=True)
class WrittenScene:
    """What the location-wide map files need of a written scene: its location, log token, world (simulated
    about the global origin region) and the offset (m, global x and y) that every global-frame record of the
    scene was moved by, and its map layers (moved)."""

    location: str
    log_token: str
    world: World
    offset: tuple[float, float]
    scene_map: SceneMap


def moved(xyz: np.ndarray, offset: tuple[float, float]) -> list[float]:
    """A global position (3,) as a list of floats, moved by ``offset`` (x, y); unchanged (bit for bit, -0.0
    included) when the offset is zero."""
    if offset != (0.0, 0.0):
        xyz = np.asarray(xyz, dtype=np.float64) + np.array([offset[0], offset[1], 0.0])
    return [float(v) for v in xyz]


def _write_scene(root: Path, cfg: SynthConfig, seed: int, idx: int, name: str, T: _Tables,
                 bar) -> WrittenScene:
    """Write one scene's files and table rows (but the map table's, see :func:`_write_maps`).

    The world is simulated about the global origin region (the sensor data does not depend on the offset); the
    global-frame records (ego poses, annotation centres, map layers) are moved by the scene's offset
    (:meth:`SynthConfig.scene_offset`)."""
    rng = np.random.default_rng([seed, idx])
    spk = cfg.sweeps_per_keyframe
    period = 1.0 / cfg.lidar_hz
    duration = (cfg.keyframes - 1) * spk * period
    world = make_world(rng, duration, cfg.density)
    if cfg.all_classes:
        world, _ = ensure_all_classes(world, rng, [kf * spk * period for kf in range(cfg.keyframes)], cfg)
    if max(world.extent[2], world.extent[3]) > max_extent(duration):
        raise RuntimeError(f"scene {idx}: world extent {world.extent[2:]} exceeds max_extent {max_extent(duration)}")
    loc = LOCATIONS[idx % len(LOCATIONS)]
    offset = cfg.scene_offset(idx, len(LOCATIONS))
    vehicle = "n015" if loc.startswith("singapore") else "n008"
    base = BASE_TIMESTAMP + idx * 3_600_000_000 + int(rng.integers(0, 1_000_000))
    day = 1 + idx % 28
    logname = f"{vehicle}-2018-08-{day:02d}-{10 + idx % 10:02d}-{(7 * idx) % 60:02d}-{(13 * idx) % 60:02d}" + \
        ("+0800" if loc.startswith("singapore") else "-0400")

    scene_tok = token(seed, "scene", idx)
    log_tok = token(seed, "log", idx)
    T.add("log", token=log_tok, logfile=logname, vehicle=vehicle, date_captured=f"2018-08-{day:02d}",
          location=loc)
    calib = {}
    calib["LIDAR_TOP"] = T.add("calibrated_sensor", token=token(seed, "calib", idx, "LIDAR_TOP"),
                               sensor_token=token(seed, "sensor", "LIDAR_TOP"),
                               translation=list(LIDAR2EGO[1]), rotation=list(LIDAR2EGO[0]), camera_intrinsic=[])
    Ks = {}
    for ch in CAMERAS:
        q, t, fc = CAMERA_RIG[ch]
        Ks[ch] = scaled_intrinsic(fc, cfg.image_width, cfg.image_height)
        calib[ch] = T.add("calibrated_sensor", token=token(seed, "calib", idx, ch),
                          sensor_token=token(seed, "sensor", ch), translation=list(t), rotation=list(q),
                          camera_intrinsic=Ks[ch].tolist())
    cam2ego = {ch: _transform(CAMERA_RIG[ch][0], CAMERA_RIG[ch][1]) for ch in CAMERAS}
    fire = {ch: camera_fire_fraction(ch) for ch in CAMERAS}

    n_agents = len(world.agents)
    inst_tok = [token(seed, "instance", idx, i) for i in range(n_agents)]
    anns: list[list[dict]] = [[] for _ in range(n_agents)]
    samples, lidar_sd, cam_sd = [], [], {ch: [] for ch in CAMERAS}
    jitter = rng.integers(-300, 301, size=cfg.sweeps_per_scene)
    jitter_az = rng.integers(-1, 2, size=cfg.sweeps_per_scene)
    pending_sweeps: list[dict] = []

    for k in range(cfg.sweeps_per_scene):
        t = (k - (spk - 1)) * period
        ts = base + int(round(t * 1e6)) + int(jitter[k])
        is_key = (k + 1) % spk == 0
        if not is_key and not cfg.write_sweeps:
            if bar is not None:
                bar.update(1)
            continue
        n_az = cfg.n_azimuth + int(jitter_az[k])  # the spin rate varies a little: 1084..1086 columns
        poses, lidar2global = _lidar_poses(world, t, period, n_az)
        prims, _ = world.primitives(t - period / 2)
        rays = cast_sweep(world.road, prims, n_agents, poses, cfg.max_range)
        pts, hit_prim, is_return = to_points(rays, rigid_inverse(lidar2global), rng, cfg.range_noise,
                                             cfg.dropout, cfg.keep_all_rays)
        folder = "samples" if is_key else "sweeps"
        fname = f"{folder}/LIDAR_TOP/{logname}__LIDAR_TOP__{ts}.pcd.bin"
        save_points(root / fname, pts)
        ego2global = lidar2global @ EGO2LIDAR_M
        pose_tok = token(seed, "ego_pose", idx, "LIDAR_TOP", k)
        T.add("ego_pose", token=pose_tok, timestamp=ts, rotation=_quat(ego2global),
              translation=moved(ego2global[:3, 3], offset))
        sd = dict(token=token(seed, "sample_data", idx, "LIDAR_TOP", k), sample_token="",
                  ego_pose_token=pose_tok, calibrated_sensor_token=calib["LIDAR_TOP"], timestamp=ts,
                  fileformat="pcd", is_key_frame=bool(is_key), height=0, width=0, filename=fname, prev="",
                  next="")
        T.add("sample_data", **sd)
        sd = T.rows["sample_data"][-1]
        lidar_sd.append(sd)
        pending_sweeps.append(sd)
        if is_key:
            kf = (k + 1) // spk - 1
            s_tok = token(seed, "sample", idx, kf)
            for p in pending_sweeps:  # non-keyframes point to the sample that follows closest in time
                p["sample_token"] = s_tok
            pending_sweeps = []
            samples.append(dict(token=s_tok, timestamp=ts, prev="", next="", scene_token=scene_tok))
            # annotations
            ego_xy = ego2global[:2, 3]
            glob = pts[is_return, :3].astype(np.float64) @ lidar2global[:3, :3].T + lidar2global[:3, 3]
            hit_agent = prims[hit_prim[hit_prim >= 0], 9].astype(np.int64)
            first_hits = np.bincount(hit_agent[hit_agent >= 0], minlength=n_agents)
            for i, a in enumerate(world.agents):
                centre, yaw, speed = world.agent_pose(i, t)
                if np.hypot(*(centre[:2] - ego_xy)) > cfg.annotation_range:
                    continue
                inter = rays.intersections[i]
                vis = first_hits[i] / inter if inter > 0 else 0.0
                attr = a.attribute(speed)
                anns[i].append(dict(
                    token=token(seed, "sample_annotation", idx, i, kf), sample_token=s_tok,
                    instance_token=inst_tok[i], visibility_token=visibility_token(vis),
                    attribute_tokens=[token(seed, "attribute", attr)] if attr else [],
                    translation=moved(centre, offset), size=[float(v) for v in a.size],
                    rotation=_yaw_quat(yaw), prev="", next="",
                    num_lidar_pts=_points_in_box(glob, centre, a.size, yaw), num_radar_pts=0))
            # cameras
            ground = ground_polygons(world.road, world.ego.s(t), world.s_range)
            noise = rng.normal(0.0, 3.0, size=(128, 128, 3)).astype(np.int16)
            for ch in CAMERAS:
                tc = t - period + fire[ch] * period
                tsc = base + int(round(tc * 1e6)) + int(rng.integers(-200, 201))
                e2g = world.ego_pose(tc)
                cprims, ccols = world.primitives(tc)
                img = render_image(ground, cprims, ccols, e2g @ cam2ego[ch], Ks[ch], cfg.image_width,
                                   cfg.image_height, noise)
                cname = f"samples/{ch}/{logname}__{ch}__{tsc}.jpg"
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
                if not ok:
                    raise InputError("could not encode the camera image as JPEG", root / cname)
                (root / cname).write_bytes(buf.tobytes())
                ptok = token(seed, "ego_pose", idx, ch, kf)
                T.add("ego_pose", token=ptok, timestamp=tsc, rotation=_quat(e2g),
                      translation=moved(e2g[:3, 3], offset))
                T.add("sample_data", token=token(seed, "sample_data", idx, ch, kf), sample_token=s_tok,
                      ego_pose_token=ptok, calibrated_sensor_token=calib[ch], timestamp=tsc, fileformat="jpg",
                      is_key_frame=True, height=cfg.image_height, width=cfg.image_width, filename=cname,
                      prev="", next="")
                cam_sd[ch].append(T.rows["sample_data"][-1])
        if bar is not None:
            bar.update(1)

    _link(samples)
    _link(lidar_sd)
    for ch in CAMERAS:
        _link(cam_sd[ch])
    T.rows["sample"].extend(samples)
    cat_tok = {n: token(seed, "category", n) for n in {a.category for a in world.agents}}
    for i, a in enumerate(world.agents):
        if not anns[i]:
            continue
        _link(anns[i])
        T.rows["sample_annotation"].extend(anns[i])
        T.add("instance", token=inst_tok[i], category_token=cat_tok[a.category], nbr_annotations=len(anns[i]),
              first_annotation_token=anns[i][0]["token"], last_annotation_token=anns[i][-1]["token"])
    T.add("scene", token=scene_tok, log_token=log_tok, nbr_samples=len(samples),
          first_sample_token=samples[0]["token"], last_sample_token=samples[-1]["token"], name=name,
          description=f"calico synthetic scene, {world.kind} road, seed {seed}")
    return WrittenScene(loc, log_tok, world, offset,
                        moved_map(scene_map(world, np.random.default_rng([seed, idx, 1])), offset))


def _write_maps(root: Path, seed: int, scenes: list[tuple[int, WrittenScene]], T: _Tables) -> None:
    """Write one location's map files and its ``map`` record (as nuScenes: one per location, listing its logs;
    the token is the one of its first scene ``idx``): the drivable-area basemap ``maps/<token>.png`` holding
    every scene at its offset (MapMask convention: the raster starts at the global origin, 0.1 m a pixel) and
    the map expansion ``maps/expansion/<location>.json``."""
    first, loc = scenes[0][0], scenes[0][1].location
    map_tok = token(seed, "map", first)
    map_file = f"maps/{map_tok}.png"
    raster = location_raster([(w.world, w.offset) for _, w in scenes])
    if not cv2.imwrite(str(root / map_file), raster, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise InputError(f"could not write the {raster.shape[1]}x{raster.shape[0]} basemap of {loc}", root / map_file)
    T.add("map", token=map_tok, log_tokens=[w.log_token for _, w in scenes], category="semantic_prior",
          filename=map_file)
    (root / "maps" / "expansion" / f"{loc}.json").write_bytes(
        expansion_bytes([w.scene_map for _, w in scenes], seed, loc))


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("output folder exists and is not empty; choose a new folder or remove it", out)


def generate(out: Path, preset: str | SynthConfig = "tiny", scenes: int | None = None, seed: int = 0,
             progress: bool = True) -> tuple[Path, str]:
    """Write a synthetic nuScenes-format dataroot into ``out`` and return ``(dataroot, version)``.

    ``preset`` is a name of :data:`PRESETS` or a :class:`SynthConfig`; ``scenes`` overrides its scene
    count. The output is deterministic per ``seed`` (byte-identical tables and point files). The data is
    written to a temporary sibling folder first and renamed at the end, so a crashed run leaves no partial
    dataset. ``out`` must not exist or be an empty folder (:class:`InputError` otherwise).
    """
    from tqdm import tqdm

    cfg = resolve_config(preset, scenes)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        from shared.errors import ConfigError

        raise ConfigError("seed", seed, "must be a non-negative integer")
    seed = int(seed)
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in ["maps/expansion", "samples/LIDAR_TOP", "sweeps/LIDAR_TOP"] + [f"samples/{c}" for c in CAMERAS]:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        rows: dict[str, list[dict]] = {n: [] for n in ("calibrated_sensor", "ego_pose", "instance", "log", "map",
                                                       "sample", "sample_annotation", "sample_data", "scene")}
        rows.update(constant_tables(seed))
        T = _Tables(rows)
        names = scene_names(cfg.scenes, cfg.is_mini)
        total = cfg.scenes * cfg.sweeps_per_scene
        with tqdm(total=total, desc=f"synth {cfg.name}", unit="sweep", disable=not progress) as bar:
            by_location: dict[str, list[tuple[int, WrittenScene]]] = {}
            for i, name in enumerate(names):
                w = _write_scene(tmp, cfg, seed, i, name, T, bar)
                by_location.setdefault(w.location, []).append((i, w))
        for scenes_here in by_location.values():  # in the order of their first scenes
            _write_maps(tmp, seed, scenes_here, T)
        write_tables(tmp / cfg.version, rows)
        _check_out(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, cfg.version
