"""The Dask stage: preprocess every scene of a nuScenes dataroot into a versioned store (docs/store.md).

:func:`run` opens the dataroot, computes the store version (:mod:`data_catalog.version`), lists each scene's
LiDAR sweeps with their calibration (on the driver: workers never load the devkit tables), and submits one task
per scene (:func:`process_scene`) to a Dask cluster: a :class:`distributed.LocalCluster` with ``workers``
processes by default, or the scheduler at ``scheduler`` (``tcp://host:8786``) when given, which is how a run
scales to many machines (every worker must see the dataroot and the store at the same paths). Each task reads
its scene's point files, runs :func:`preprocess.sweep.process_sweep` on every sweep, records the sweeps that
fail with an :class:`shared.errors.InputError` (truncated or missing point file, broken calibration) in the
shard's errors table and goes on, then commits the scene's shard atomically through
:class:`data_catalog.writer.ShardWriter`. A missing camera image does not fail its sweep: the sweep is projected
into the cameras it has, the missing one is stored as absent (NaN calibration) and a ``warning`` row says so.

Failures stay visible: every run's summary counts the failed sweeps (and warnings) held by the committed shards
of its scenes, whether this run or an earlier one computed them, and its exit status is 1 while there are any.
``retry_failed`` (``--retry-failed``) recomputes the scenes whose shards hold failed sweeps, each new shard
swapped in atomically for the old one; when the inputs were repaired (which changes the input manifest, hence
the version id: the id always names the inputs the shards were computed from), the new version reuses the
shards of the same run over the old inputs whose scene's input files are unchanged and which hold no failed
sweep (hard links), and computes the rest.

Resuming: scenes whose shard is committed are skipped (checked before submitting and again in the task), so a
killed run, rerun, redoes only the missing scenes; two runs on the same version at once each write their own
temporary shard and the second rename loses harmlessly. At the end the version-level tables are derived
(:func:`data_catalog.tables.finalize`) and a run record is written to ``versions/<id>/runs/``.

At most ``2 * workers`` scenes are in flight at once, so the driver holds the sweep lists of only those.
GPU: with ``backend='gpu'`` (resolved on the driver) and no scheduler, the local cluster is dask-cuda's
``LocalCUDACluster`` with one worker per GPU (at most ``workers``); written, not yet run on a GPU machine.
"""
from __future__ import annotations

import getpass
import os
import platform
import socket
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from data_catalog.format import SweepInput
from data_catalog.layout import (clean_stale_tmp, committed_scenes, is_committed, read_manifest, shard_dir,
                                 shard_failures, version_dir)
from data_catalog.tables import finalize
from data_catalog.version import (VersionSpec, check_sweeps, code_version, input_manifest,
                                  nuscenes_input_files)
from data_catalog.versions import create_version, read_version_json, same_run_other_inputs, write_run_record
from data_catalog.writer import ShardWriter, link_shard
from data_catalog.writer import warm_up as warm_up_writer
from preprocess.dask_setup import (CONNECT_TIMEOUT_S, check_scheduler, children_ignore_sigint, connect_scheduler,
                                   dataroot_checks, forward_notices, notify_driver, quiet_logs, require_visible,
                                   start_quiet_resource_tracker, store_checks)
from shared.errors import ConfigError, InputError
from shared.paths import absolute, check_folder


@dataclass(frozen=True)
class SweepPlan:
    """One sweep to process: its SweepInfo, or the error that stopped the driver from building it."""

    token: str
    info: Any = None  # shared.records.SweepInfo
    error: tuple[str, str, str] | None = None  # (file, stage, reason)
    boxes: Any = None  # shared.region_quality.Boxes of a keyframe of an annotated dataroot: audited (audit_boxes)


@dataclass(frozen=True)
class ScenePlan:
    """A scene's sweeps, shipped to a worker as one task argument. Pickled packed (:func:`_pack_plan`): the
    calibration of all sweeps and cameras as a few stacked arrays instead of several small arrays and a Path per
    sweep and camera (a 400-sweep plan of the mini preset: 60 ms to pickle and load instead of 145 ms)."""

    scene: str
    sweeps: tuple[SweepPlan, ...]
    replace: bool = False  # commit in place of the scene's committed shard (retry_failed)

    def __reduce__(self):
        return _unpack_plan, (_pack_plan(self),)


_CAM_MATRICES = ("intrinsic", "lidar2cam", "cam2ego", "ego2global")


def _pack_plan(plan: ScenePlan) -> dict[str, Any]:
    """The plan as lists of strings and stacked numpy arrays (inverse: :func:`_unpack_plan`)."""
    import numpy as np

    infos = [sp.info for sp in plan.sweeps if sp.info is not None]
    cams = [c for info in infos for c in info.cameras]
    return {
        "scene": plan.scene, "replace": plan.replace, "tokens": [sp.token for sp in plan.sweeps],
        "errors": [sp.error for sp in plan.sweeps], "has_info": [sp.info is not None for sp in plan.sweeps],
        "info_str": [(i.token, str(i.path), i.scene_token, i.scene_name, i.sample_token) for i in infos],
        "info_int": np.array([(i.timestamp, i.is_key_frame, len(i.cameras)) for i in infos], np.int64).reshape(-1, 3),
        "lidar2ego": np.array([i.lidar2ego for i in infos], np.float64).reshape(-1, 4, 4),
        "ego2global": np.array([i.ego2global for i in infos], np.float64).reshape(-1, 4, 4),
        "cam_str": [(c.channel, c.token, None if c.image_path is None else str(c.image_path)) for c in cams],
        "cam_int": np.array([(c.width, c.height, c.timestamp) for c in cams], np.int64).reshape(-1, 3),
        **{f"cam_{k}": np.array([getattr(c, k) for c in cams], np.float64) for k in _CAM_MATRICES},
        **_pack_boxes([sp.boxes for sp in plan.sweeps]),
    }


def _pack_boxes(boxes: Sequence[Any]) -> dict[str, Any]:
    """Each sweep's boxes (None: not audited) as counts (-1: None) and stacked arrays (inverse: _unpack_boxes)."""
    import numpy as np

    have = [b for b in boxes if b is not None]
    return {"box_count": [-1 if b is None else len(b) for b in boxes],
            "box_cls": [c for b in have for c in b.cls],
            **{f"box_{k}": np.concatenate([getattr(b, k) for b in have]) if have else None
               for k in ("center", "size", "yaw", "rotation")}}


def _unpack_boxes(d: dict[str, Any]) -> list[Any]:
    from shared.region_quality import Boxes

    out, i = [], 0
    for n in d["box_count"]:
        if n < 0:
            out.append(None)
            continue
        out.append(Boxes(**{k: d[f"box_{k}"][i:i + n] for k in ("center", "size", "yaw", "rotation")},
                         cls=d["box_cls"][i:i + n]))
        i += n
    return out


def _unpack_plan(d: dict[str, Any]) -> ScenePlan:
    from shared.records import CameraCalib, SweepInfo

    cams = [CameraCalib(channel=channel, width=w, height=h, timestamp=ts, token=token,
                        image_path=None if image is None else Path(image),
                        **{m: d[f"cam_{m}"][k] for m in _CAM_MATRICES})
            for k, ((channel, token, image), (w, h, ts)) in enumerate(zip(d["cam_str"], d["cam_int"].tolist()))]
    infos, c0 = [], 0
    for j, ((token, path, scene_token, scene_name, sample_token), (ts, key, ncam)) in enumerate(
            zip(d["info_str"], d["info_int"].tolist())):
        infos.append(SweepInfo(token=token, path=Path(path), timestamp=ts, is_key_frame=bool(key),
                               lidar2ego=d["lidar2ego"][j], ego2global=d["ego2global"][j],
                               cameras=tuple(cams[c0:c0 + ncam]), scene_token=scene_token, scene_name=scene_name,
                               sample_token=sample_token))
        c0 += ncam
    it = iter(infos)
    sweeps = tuple(SweepPlan(token, next(it) if has else None, err, boxes)
                   for token, has, err, boxes in zip(d["tokens"], d["has_info"], d["errors"], _unpack_boxes(d)))
    return ScenePlan(d["scene"], sweeps, d["replace"])


@dataclass
class RunSummary:
    """What a run did. ``failed_sweeps`` / ``warnings`` count the error / warning rows in the errors tables of
    the committed shards of the run's scenes, by this run or an earlier one (failures are not forgotten by a
    rerun); ``failed_scenes`` maps a scene whose task crashed (no shard written) to the reason.
    ``retried_scenes``: scenes recomputed by ``retry_failed`` in place of a shard with failed sweeps;
    ``reused_scenes``: shards taken over from version ``reused_from`` (same run over other inputs)."""

    version: str
    path: str
    scenes_total: int = 0
    scenes_done: int = 0
    scenes_skipped: int = 0
    failed_scenes: dict[str, str] = field(default_factory=dict)
    sweeps_done: int = 0
    failed_sweeps: int = 0
    warnings: int = 0
    retried_scenes: list[str] = field(default_factory=list)
    reused_scenes: list[str] = field(default_factory=list)
    reused_from: str = ""
    points: int = 0
    created_version: bool = False
    wall_s: float = 0.0
    kernel_s: float = 0.0  # sum over sweeps of process_sweep's total
    load_s: float = 0.0  # sum over sweeps of point-file reading
    write_s: float = 0.0  # sum over scenes of encoding + shard commit
    busy_s: float = 0.0  # sum over scenes of the tasks' wall time (kernels + I/O + the rest of the task)
    tasks: list[dict[str, Any]] = field(default_factory=list)  # per committed scene: worker pid, start, end
    tasks_window: tuple[float, float] = (0.0, 0.0)  # wall clock (time.time()) of the task phase: start, end
    prepare_s: float = 0.0  # driver: opening the tables, input manifest, version, sweep lists
    startup_s: float = 0.0  # one-off: cluster start and stop, workers' warm-up (Numba kernels loaded)
    tasks_s: float = 0.0  # wall time of the scene tasks (the steady state; startup_s not included)
    workers: int = 0
    dashboard: str = ""

    @property
    def exit_code(self) -> int:
        """0 when every sweep and scene of the run's scenes went through (warnings allowed), 1 when some failed,
        in this run or an earlier one."""
        return 1 if (self.failed_sweeps or self.failed_scenes) else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Driver side: version and plans
# ----------------------------------------------------------------------------------------------------------


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("numpy", "numba", "zarr", "pyarrow", "dask", "distributed", "nuscenes-devkit", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str:
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return ""


def lidar_tokens(nusc, scene: dict, keyframes_only: bool) -> list[str]:
    """LIDAR_TOP sample_data tokens of a scene in time order (as :func:`shared.nuscenes_io.iter_lidar_sweeps`)."""
    from shared import nuscenes_io

    return list(nuscenes_io.iter_lidar_tokens(nusc, scene, keyframes_only))


def audit_boxes(nusc, info) -> Any:
    """The annotated boxes of a keyframe in its LiDAR frame (devkit ``get_sample_data``, through
    :func:`shared.region_quality.boxes_from_nuscenes`) when the dataroot has annotations; None for a non-keyframe
    or a dataroot without any (then the sweep is not audited: :mod:`data_catalog.audit`)."""
    if not info.is_key_frame or not len(getattr(nusc, "sample_annotation", ()) or ()):
        return None
    from shared.region_quality import boxes_from_nuscenes

    return boxes_from_nuscenes(nusc, info.token)


def plan_scenes(nusc, sweeps: str, scenes: Sequence[str] | None = None) -> list[ScenePlan]:
    """Per scene (sorted by name), its sweeps as :class:`SweepPlan`, keyframes with their boxes when the
    dataroot has annotations (:func:`audit_boxes`). A sweep whose record cannot be built (e.g. a camera without
    calibration) carries its error instead of failing the run."""
    from shared.nuscenes_io import iter_scenes, sweep_info

    plans = []
    for rec in iter_scenes(nusc, scenes):
        items = []
        for tok in lidar_tokens(nusc, rec, sweeps == "keyframes"):
            try:
                info = sweep_info(nusc, tok, scene=rec)
                items.append(SweepPlan(tok, info=info, boxes=audit_boxes(nusc, info)))
            except InputError as exc:
                items.append(SweepPlan(tok, error=(exc.path or "", "calibration", str(exc))))
        plans.append(ScenePlan(rec["name"], tuple(items)))
    return plans


def prepare_version(nusc, dataroot: str | Path, version: str, store: str | Path, cfg, sweeps: str, seed: int,
                    argv: Sequence[str] | None = None) -> tuple[VersionSpec, Path, bool]:
    """Compute the version of this run and create its folder (if new). Returns (spec, folder, created)."""
    code = code_version()
    manifest = input_manifest(dataroot, version, nuscenes_input_files(nusc, sweeps))
    spec = VersionSpec(dataset_version=version, manifest_sha256=manifest["sha256"], config=cfg.to_dict(),
                       sweeps=sweeps, seed=int(seed), code_sha256=code["sha256"])
    info = {
        "scenes": sorted(s["name"] for s in nusc.scene),
        "dataset": {"dataroot": str(Path(dataroot).resolve()), "version": version,
                    "manifest": {k: v for k, v in manifest.items()}},
        "code": code,
        "lineage": {"command": list(argv) if argv is not None else sys.argv, "host": socket.gethostname(),
                    "user": getpass.getuser(), "python": platform.python_version(),
                    "packages": _package_versions(), "git_commit": _git_commit()},
    }
    vdir, created = create_version(store, spec, info)
    return spec, vdir, created


# ----------------------------------------------------------------------------------------------------------
# Worker side: one scene
# ----------------------------------------------------------------------------------------------------------


def _relpath(path, dataroot: str | None) -> str:
    if path is None:
        return ""
    p = str(path)
    if dataroot and p.startswith(dataroot.rstrip("/") + "/"):
        return p[len(dataroot.rstrip("/")) + 1:]
    return p


def setup_worker(threads: int = 1) -> None:
    """Process settings of a preprocessing worker (idempotent): glibc keeps the kernels' freed scratch memory
    (:func:`shared.malloc.tune_malloc`), numpy does not ask for transparent huge pages for the writer's
    scene-sized arrays (:func:`shared.malloc.numpy_hugepages`), and Blosc compresses with ``threads`` threads
    (one per worker thread: the workers already use every core)."""
    import numcodecs.blosc

    from shared.malloc import numpy_hugepages, tune_malloc

    tune_malloc()
    numpy_hugepages(False)
    if numcodecs.blosc.get_nthreads() != threads:
        numcodecs.blosc.set_nthreads(threads)


def warm_worker(cfg_dict: dict, backend: str, cameras=None, columns: int = 5, threads: int = 1,
                notify=None) -> float:
    """Run once per worker before the scene tasks: :func:`setup_worker`, then one small synthetic sweep through
    the kernels (:func:`preprocess.sweep.warm_up`, with the run's cameras so that the projection is loaded too)
    and the store's encoder, so that loading the Numba kernels is not counted against the first scene.
    ``notify(line)`` is called once if the kernels are compiled (a cold cache: the first run;
    :func:`shared.compile_notice.announce_compilation`). Returns the wall time in seconds."""
    from preprocess.sweep import SweepConfig, warm_up
    from shared.compile_notice import PREPROCESS_COMPILE_S, announce_compilation

    t0 = time.perf_counter()
    setup_worker(threads)
    with announce_compilation(notify or (lambda line: None), seconds=PREPROCESS_COMPILE_S):
        warm_up(SweepConfig.from_dict(cfg_dict), backend, cameras, columns)
    warm_up_writer()
    return time.perf_counter() - t0


def _first_cameras(todo):
    """The cameras of the first sweep of the plans that has any (for the warm-up), or None."""
    for plan in todo:
        for sp in plan.sweeps:
            if sp.info is not None and sp.info.cameras:
                return sp.info.cameras
    return None


def _max_points(plan: ScenePlan) -> int:
    """At most how many points the plan's point files hold (float32, >= 3 columns: size // 12), for sizing the
    shard writer's columns; unreadable files count 0 (they become errors)."""
    total = 0
    for sp in plan.sweeps:
        if sp.info is not None:
            try:
                total += os.stat(sp.info.path).st_size // 12
            except OSError:
                pass
    return total


def _size(path) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, TypeError):  # missing, or no path at all
        return -1


def scene_inputs_sha256(plan: ScenePlan, dataroot: str | None = None) -> str:
    """SHA-256 of what a scene's shard is computed from besides the tables, the configuration and the code:
    each sweep's token, and the path (relative to ``dataroot``) and size (-1: missing) of its point file and
    camera images, as the version's input manifest sees files (:mod:`data_catalog.version`). Recorded in the
    shard's manifest; equal hashes (and equal tables) let a version over repaired inputs reuse the shard."""
    import hashlib

    h = hashlib.sha256()
    for sp in plan.sweeps:
        h.update(f"{sp.token}\n".encode())
        if sp.info is None:
            h.update(b"(no record)\n")
            continue
        for path in (sp.info.path, *(c.image_path for c in sp.info.cameras)):
            h.update(f"{_relpath(path, dataroot)}\t{_size(path)}\n".encode())
    return h.hexdigest()


def present_cameras(cameras) -> tuple[tuple, tuple]:
    """(cameras whose image file exists and is not empty, the others). The preprocessing never decodes images:
    an image that exists but does not decode is the trainer's to find."""
    ok, absent = [], []
    for c in cameras:
        (ok if _size(c.image_path) > 0 else absent).append(c)
    return tuple(ok), tuple(absent)


def sweep_audit(points, res, boxes) -> dict[str, Any] | None:
    """The audit columns of a processed keyframe (:func:`data_catalog.audit.audit_sweep`: its boxes against the
    points as stored, the region ids and ground flags, and the filter that dropped each point's cluster); None
    without boxes."""
    if boxes is None:
        return None
    import numpy as np

    from data_catalog.audit import audit_sweep

    reason = np.zeros(len(res.region), np.int64)
    if res.pooling is not None:
        lab = np.asarray(res.labels)
        reason[lab >= 0] = np.asarray(res.pooling.cluster_reason)[lab[lab >= 0]]
    return audit_sweep(points, res.region, res.ground, boxes, dropped_reason=reason)


def process_scene(vdir: str, plan: ScenePlan, cfg_dict: dict, backend: str, seed: int,
                  dataroot: str | None = None) -> dict[str, Any]:
    """Process one scene and commit its shard (runs on a Dask worker; in place of the committed one when
    ``plan.replace``). Returns a small result dict: ``scene, status (committed|replaced|exists|skipped),
    sweeps, errors, warnings, points, kernel_s, load_s, write_s, task_s`` (``task_s``: the task's own wall
    time, all of it)."""
    t_begin = time.perf_counter()
    started = time.time()
    import numpy as np

    from preprocess.sweep import SweepConfig, process_sweep
    from shared.nuscenes_io import load_sweep_points

    setup_worker()
    if not os.path.isfile(os.path.join(vdir, "version.json")):  # a worker that joined after the path check
        raise InputError(f"Dask worker on {socket.gethostname()} cannot see the store version", vdir)

    out = {"scene": plan.scene, "status": "skipped", "sweeps": 0, "errors": 0, "warnings": 0, "points": 0,
           "kernel_s": 0.0, "load_s": 0.0, "write_s": 0.0, "task_s": 0.0, "pid": os.getpid(), "started": started}
    if not plan.replace and is_committed(vdir, plan.scene):
        return out
    cfg = SweepConfig.from_dict(cfg_dict)
    writer = ShardWriter(vdir, plan.scene, expected_points=_max_points(plan),
                         inputs_sha256=scene_inputs_sha256(plan, dataroot))
    write_s = 0.0
    for sp in plan.sweeps:
        if sp.error is not None:
            file, stage, reason = sp.error
            writer.add_error(sp.token, _relpath(file, dataroot), reason, stage)
            continue
        info = sp.info
        rel = _relpath(info.path, dataroot)
        t0 = time.perf_counter()
        cameras, absent = present_cameras(info.cameras)
        try:
            points = load_sweep_points(info)
        except InputError as exc:
            writer.add_error(sp.token, _relpath(exc.path, dataroot) or rel, str(exc), "load")
            continue
        t1 = time.perf_counter()
        try:
            res = process_sweep(points, cameras, cfg, backend=backend, seed=seed, token=info.token)
        except InputError as exc:
            writer.add_error(sp.token, _relpath(exc.path, dataroot) or rel, str(exc), "process")
            continue
        t2 = time.perf_counter()
        sw = SweepInput(token=info.token, points=points, timestamp=info.timestamp,
                        is_key_frame=info.is_key_frame, path=rel, lidar2ego=info.lidar2ego,
                        ego2global=info.ego2global, cameras=cameras)
        try:
            writer.add(sw, res, backend=backend, load_ms=(t1 - t0) * 1e3, audit=sweep_audit(points, res, sp.boxes))
        except InputError as exc:
            writer.add_error(sp.token, rel, str(exc), "encode")
            continue
        for cam in absent:  # the sweep is in the shard, without these cameras
            writer.add_error(sp.token, _relpath(cam.image_path, dataroot),
                             f"{cam.channel} image of sample_data {cam.token or '?'} not found (or empty): the "
                             f"sweep is kept without {cam.channel} (absent: NaN calibration, no projections)",
                             "load", level="warning")
        write_s += time.perf_counter() - t2
        out["load_s"] += t1 - t0
        out["kernel_s"] += res.timings_ms["total"] / 1e3
        out["points"] += int(np.asarray(points).shape[0])
    t3 = time.perf_counter()
    result = writer.commit(replace=plan.replace)
    out["write_s"] = write_s + time.perf_counter() - t3
    out["task_s"] = time.perf_counter() - t_begin
    out["ended"] = time.time()
    out["status"] = result.status
    out["sweeps"] = result.manifest["counts"]["sweeps"]
    out["errors"] = result.manifest["counts"]["errors"]
    out["warnings"] = result.manifest["counts"].get("warnings", 0)
    return out


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


def _dashboard(client) -> str:
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)
    except ImportError:
        return "unavailable (pip install bokeh to serve the Dask dashboard)"
    try:
        return str(client.dashboard_link)
    except Exception:  # pragma: no cover - depends on the scheduler
        return "unavailable"


def run(
    dataroot: str | Path,
    version: str,
    store: str | Path,
    cfg=None,
    *,
    sweeps: str = "keyframes",
    backend: str = "auto",
    seed: int = 0,
    workers: int = 2,
    scheduler: str | None = None,
    processes: bool = True,
    threads_per_worker: int = 1,
    scenes: Sequence[str] | None = None,
    progress: bool = True,
    log=print,
    argv: Sequence[str] | None = None,
    retry_failed: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> RunSummary:
    """Preprocess ``scenes`` (default: all) of ``dataroot``/``version`` into ``store``; see the module docstring.

    cfg: a :class:`preprocess.sweep.SweepConfig` (default: all defaults). workers/processes/threads_per_worker
    shape the LocalCluster (``processes=False``: worker threads in this process); ``workers=0`` runs the scenes
    one by one in the calling thread without Dask. ``scheduler``: address of an existing Dask scheduler (then
    those are ignored; ``connect_timeout``: seconds to wait for it and for a first worker; every worker must see
    the dataroot and the store, checked before any scene starts). ``log``: where progress lines go (None:
    quiet). A scene whose task raises anything but an InputError is recorded in ``failed_scenes`` (no shard;
    the next run retries it). ``retry_failed``: also recompute the committed scenes that hold failed sweeps,
    and reuse intact shards of an earlier version over other inputs (:func:`select_scenes`).
    """
    from preprocess.sweep import SweepConfig
    from shared.backend import resolve_backend
    from shared.nuscenes_io import open_nuscenes

    t_start = time.perf_counter()
    cfg = cfg if cfg is not None else SweepConfig()
    check_sweeps(sweeps)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("--seed", seed, "must be an integer")
    if scheduler is None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError("--workers", workers, "must be an integer >= 0 (0: in this process, without Dask)")
    if scheduler is not None:
        check_scheduler(scheduler, connect_timeout)
    backend = resolve_backend(backend)
    log = log or (lambda *a, **k: None)
    # The driver's absolute paths are what the workers get (they may run in other folders, on other machines);
    # every input is checked before anything is written.
    dataroot = check_folder(dataroot, "--dataroot") if absolute(dataroot).exists() else absolute(dataroot)
    store = check_folder(store, "--store", must_exist=False)

    nusc = open_nuscenes(dataroot, version)
    plans = plan_scenes(nusc, sweeps, scenes)  # unknown scene names fail here
    client = connect_scheduler(scheduler, connect_timeout) if scheduler else None
    try:
        if client is not None:
            require_visible(client, dataroot_checks(str(dataroot), version, _first_point_file(plans)))
        spec, vdir, created = prepare_version(nusc, dataroot, version, store, cfg, sweeps, seed, argv)
        if client is not None:
            require_visible(client, store_checks(str(vdir)))
    except BaseException:
        if client is not None:
            client.close()
        raise
    del nusc
    log(f"store version {spec.id} ({'new' if created else 'existing'}): {vdir}")
    removed = clean_stale_tmp(vdir)
    if removed:
        log(f"removed {len(removed)} leftover temporary shard(s) of dead writers")
    summary = RunSummary(version=spec.id, path=str(vdir), scenes_total=len(plans), created_version=created)
    todo = select_scenes(plans, vdir, store, str(dataroot), retry_failed, summary)
    log(f"{len(plans)} scene(s): {summary.scenes_skipped} already committed, {len(todo)} to do"
        + (f" ({len(summary.retried_scenes)} to retry in place)" if summary.retried_scenes else "")
        + (f"; {len(summary.reused_scenes)} reused from version {summary.reused_from} (unchanged inputs)"
           if summary.reused_scenes else ""))

    summary.prepare_s = time.perf_counter() - t_start
    t_tasks = time.perf_counter()
    try:
        if todo and client is None and workers == 0:
            _run_inline(todo, vdir, cfg.to_dict(), backend, seed, str(dataroot), summary, progress, log)
        elif todo:
            _run_tasks(todo, vdir, cfg.to_dict(), backend, seed, str(dataroot), summary, workers, client,
                       processes, threads_per_worker, progress, log)
    except KeyboardInterrupt:  # Ctrl-C: what is committed stays; say so, then exit (130 from the CLI)
        done = len(set(committed_scenes(vdir)) & {p.scene for p in plans})
        log(f"interrupted: {done} of {len(plans)} scene(s) committed; rerun the same command to resume "
            "(committed scenes are skipped)")
        if client is not None:
            with quiet_logs():  # pending tasks are cancelled: nothing the user needs to read
                client.close()
        raise
    finally:
        if client is not None:
            client.close()
    summary.tasks_s = time.perf_counter() - t_tasks - summary.startup_s
    finalize(vdir)
    count_failures(summary, vdir, plans)
    summary.wall_s = time.perf_counter() - t_start
    _write_run_record(vdir, summary, argv)
    return summary


def _reusable(base_vdir: Path, plan: ScenePlan, dataroot: str) -> bool:
    """The base version's shard of the scene is committed, holds no failed sweep, was computed from the input
    files the scene has now (:func:`scene_inputs_sha256`) and its files have their manifest's sizes."""
    from data_catalog.verify import verify_shard

    if not is_committed(base_vdir, plan.scene):
        return False
    src = shard_dir(base_vdir, plan.scene)
    man = read_manifest(src)
    if man["counts"].get("errors", 1) or man.get("inputs_sha256") != scene_inputs_sha256(plan, dataroot):
        return False
    return not verify_shard(src, checksums=False)


def select_scenes(plans: Sequence[ScenePlan], vdir: Path, store, dataroot: str, retry_failed: bool,
                  summary: RunSummary) -> list[ScenePlan]:
    """The plans to compute (on the driver): the scenes without a committed shard; with ``retry_failed`` also
    the committed ones whose shard holds failed sweeps (``replace=True``: swapped in for the old shard,
    ``summary.retried_scenes``), while a scene not committed that the latest version of the same run over
    other inputs (:func:`data_catalog.versions.same_run_other_inputs`) holds reusable (:func:`_reusable`) is
    hard-linked from it instead (``summary.reused_scenes``). Counts the rest in ``summary.scenes_skipped``."""
    import dataclasses

    base = same_run_other_inputs(store, read_version_json(vdir)) if retry_failed else None
    base_vdir = version_dir(store, base["id"]) if base else None
    todo = []
    for p in plans:
        if is_committed(vdir, p.scene):
            if retry_failed and shard_failures(vdir, p.scene)[0]:
                todo.append(dataclasses.replace(p, replace=True))
                summary.retried_scenes.append(p.scene)
            else:
                summary.scenes_skipped += 1
        elif base_vdir is not None and _reusable(base_vdir, p, dataroot):
            if link_shard(shard_dir(base_vdir, p.scene), vdir, p.scene).status == "committed":
                summary.reused_scenes.append(p.scene)
                summary.reused_from = base["id"]
            else:  # committed meanwhile by another run
                summary.scenes_skipped += 1
        else:
            todo.append(p)
    return todo


def count_failures(summary: RunSummary, vdir: Path, plans: Sequence[ScenePlan]) -> None:
    """Set ``summary.failed_sweeps`` / ``warnings`` to the error / warning rows of the committed shards of the
    run's scenes (whichever run committed them)."""
    summary.failed_sweeps = summary.warnings = 0
    for p in plans:
        if is_committed(vdir, p.scene):
            errors, warnings = shard_failures(vdir, p.scene)
            summary.failed_sweeps += errors
            summary.warnings += warnings


def _first_point_file(plans: Sequence[ScenePlan]) -> str | None:
    """The first point file of the plans that the driver sees (for the workers' path check), or None."""
    for plan in plans:
        for sp in plan.sweeps:
            if sp.info is not None and os.path.isfile(sp.info.path):
                return str(sp.info.path)
    return None


def _account(summary: RunSummary, r: dict) -> None:
    if r["status"] in ("committed", "replaced"):
        summary.scenes_done += 1
        summary.sweeps_done += r["sweeps"]
        summary.failed_sweeps += r["errors"]  # this run's, for the progress bar; count_failures sets the total
        summary.warnings += r["warnings"]
        summary.points += r["points"]
        summary.kernel_s += r["kernel_s"]
        summary.load_s += r["load_s"]
        summary.write_s += r["write_s"]
        summary.busy_s += r["task_s"]
        summary.tasks.append({k: r.get(k) for k in ("scene", "pid", "started", "ended", "sweeps")})
    else:  # committed meanwhile by another run
        summary.scenes_skipped += 1


def _run_inline(todo, vdir, cfg_dict, backend, seed, dataroot, summary, progress, log) -> None:
    """``workers=0``: the scenes one after another in the calling thread, no Dask (debugging, tests)."""
    from tqdm import tqdm

    summary.workers = 0
    summary.dashboard = "none (in-process run)"
    summary.startup_s = warm_worker(cfg_dict, backend, _first_cameras(todo), notify=log)
    for plan in tqdm(todo, unit="scene", disable=not progress, desc=f"preprocess {summary.version}"):
        try:
            r = process_scene(str(vdir), plan, cfg_dict, backend, seed, dataroot)
        except Exception as exc:  # as with Dask: record the scene, go on
            summary.failed_scenes[plan.scene] = f"{type(exc).__name__}: {exc}"
            if os.environ.get("CALICO_DEBUG"):
                traceback.print_exception(exc)
            continue
        _account(summary, r)


def _cuda_cluster(workers: int):
    """dask-cuda's LocalCUDACluster, one worker per visible GPU (at most ``workers``). Untested here (no GPU):
    :class:`shared.errors.BackendUnavailable` when dask-cuda is not installed."""
    from shared.errors import BackendUnavailable

    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise BackendUnavailable("--backend gpu with a local cluster needs dask-cuda (pip install dask-cuda), "
                                 "or pass --scheduler of a cluster with GPU workers") from None
    import cupy

    n = min(workers, int(cupy.cuda.runtime.getDeviceCount()))
    return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(range(n)), threads_per_worker=1, dashboard_address=":0")


#: Dask settings of the workers of the local cluster that ``run`` starts. The statistical profiler of each
#: worker samples the running task's stack every 10 ms from the worker's event loop, for a dashboard panel this
#: stage does not need; off, single-threaded workers ran 0-4 % faster (``bench/bench_run.py --workers 1
#: [--dask-profiler]``, docs/store.md). Workers of a cluster given with ``--scheduler`` keep their own settings
#: (``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False`` in their environment does the same).
LOCAL_WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


def local_cluster(workers: int, backend: str = "cpu", processes: bool = True, threads_per_worker: int = 1):
    """The cluster ``run`` starts without ``--scheduler``: dask-cuda's for the GPU backend, else a LocalCluster
    of ``workers`` processes (threads with ``processes=False``) of ``threads_per_worker`` threads each, with
    ``NUMBA_NUM_THREADS`` to match; :data:`LOCAL_WORKER_CONFIG` applies to its workers, which ignore SIGINT
    (:func:`preprocess.dask_setup.children_ignore_sigint`: a Ctrl-C stops the driver, which closes them; and
    :func:`preprocess.dask_setup.start_quiet_resource_tracker`)."""
    import dask
    from distributed import LocalCluster

    if processes:
        start_quiet_resource_tracker()
    # the nannies pass the config on to the worker processes
    with dask.config.set(LOCAL_WORKER_CONFIG), children_ignore_sigint():
        if backend == "gpu" and processes:
            return _cuda_cluster(workers)
        env = {"NUMBA_NUM_THREADS": str(threads_per_worker), "OMP_NUM_THREADS": str(threads_per_worker)}
        kw = {"env": env} if processes else {}
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
                            dashboard_address=":0", **kw)


def warm_workers(client, tag: str, cfg_dict: dict, backend: str, cameras, threads: int) -> dict[str, float]:
    """:func:`warm_worker` on every worker of ``client``, as one task pinned to each (not ``client.run``, which
    blocks the worker's event loop: the compilation notice, :func:`preprocess.dask_setup.notify_driver`, would
    reach the driver only when it is over). Returns {worker address: seconds}."""
    futs = {addr: client.submit(warm_worker, cfg_dict, backend, cameras, 5, threads, notify_driver,
                                workers=[addr], allow_other_workers=False, pure=False, key=f"warm-{addr}-{tag}")
            for addr in client.scheduler_info()["workers"]}
    return {addr: fut.result() for addr, fut in futs.items()}


def _run_tasks(todo, vdir, cfg_dict, backend, seed, dataroot, summary, workers, client, processes,
               threads_per_worker, progress, log) -> None:
    """The scenes as Dask tasks on ``client`` (of a ``--scheduler``; the caller closes it), or without one on a
    local cluster started and closed here (quietly after a Ctrl-C)."""
    from distributed import Client, as_completed
    from tqdm import tqdm

    t_start = time.perf_counter()
    cluster = None
    if client is None:
        cluster = local_cluster(workers, backend, processes, threads_per_worker)
        client = Client(cluster)
    try:
        nw = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        summary.workers = nw
        summary.dashboard = _dashboard(client)
        log(f"Dask: {nw} worker(s), dashboard {summary.dashboard}")
        run_tag = uuid.uuid4().hex[:8]
        try:
            with forward_notices(client, log):  # the kernels' compilation, on a cold cache
                warm = warm_workers(client, run_tag, cfg_dict, backend, _first_cameras(todo), threads_per_worker)
            log("workers warmed up in " + ", ".join(f"{v:.1f} s" for v in warm.values()))
        except Exception as exc:  # an optimisation only: the tasks load the kernels themselves
            log(f"worker warm-up failed ({type(exc).__name__}: {exc}); going on")
        summary.startup_s = time.perf_counter() - t_start
        phase_start = time.time()
        window = 2 * nw
        pending = list(todo)
        futures = {}

        def submit(plan):
            fut = client.submit(process_scene, str(vdir), plan, cfg_dict, backend, seed, dataroot,
                                key=f"scene-{plan.scene}-{summary.version}-{run_tag}", pure=False)
            futures[fut] = plan.scene
            return fut

        ac = as_completed([submit(pending.pop(0)) for _ in range(min(window, len(pending)))])
        bar = tqdm(total=len(todo), unit="scene", disable=not progress, desc=f"preprocess {summary.version}")
        for fut in ac:
            scene = futures.pop(fut)
            try:
                r = fut.result()
            except Exception as exc:  # a bug or an unexpected error in one scene: record it, go on
                summary.failed_scenes[scene] = f"{type(exc).__name__}: {exc}"
                log(f"scene {scene} failed: {type(exc).__name__}: {exc}")
                if os.environ.get("CALICO_DEBUG"):
                    traceback.print_exception(exc)
            else:
                _account(summary, r)
            bar.update(1)
            bar.set_postfix(sweeps=summary.sweeps_done, failed=summary.failed_sweeps)
            if pending:
                ac.add(submit(pending.pop(0)))
        bar.close()
        summary.tasks_window = (phase_start, time.time())
    except KeyboardInterrupt:
        if cluster is not None:
            log("interrupted: stopping the local Dask workers (a few seconds)...")
        raise
    finally:
        t_close = time.perf_counter()
        if cluster is not None:  # nothing said while closing it is for the user (e.g. "still alive... killing")
            with quiet_logs(client):
                client.close()
                cluster.close()
        summary.startup_s += time.perf_counter() - t_close


def _write_run_record(vdir: Path, summary: RunSummary, argv) -> None:
    """A new record in ``runs/`` (:func:`data_catalog.versions.write_run_record`: every run's is kept)."""
    from datetime import datetime, timezone

    write_run_record(vdir, {"finished": datetime.now(timezone.utc).isoformat(), "host": socket.gethostname(),
                            "pid": os.getpid(), "command": list(argv) if argv is not None else sys.argv,
                            "summary": summary.to_dict()})
