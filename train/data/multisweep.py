"""Multi-sweep LiDAR input: a keyframe and its previous sweeps in the keyframe's LiDAR frame, with a time lag.

What every nuScenes detector feeds its backbone, read from a store version built with ``--sweeps all`` (which
holds every LIDAR_TOP sweep of a scene in time order, with its ``lidar2ego``, ``ego2global`` and ``timestamp``).
The semantics are those of the devkit's ``LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP",
"LIDAR_TOP", nsweeps, min_distance)`` (``tests/train/test_multisweep.py`` compares the two on the same sample):

* the sweeps: the keyframe, then the sweep before it, and so on (the devkit follows the ``prev`` links of the
  sample_data records, non-keyframe sweeps included): ``n_sweeps`` in all, fewer at the start of a scene (the
  devkit stops where ``prev`` is empty, at the scene's first sweep, which is the shard's sweep 0);
* each sweep's points with ``|x| < min_distance`` and ``|y| < min_distance`` in its own LiDAR frame are dropped
  (the devkit's ``remove_close``: a square, not a circle; the ego vehicle's self-returns);
* each sweep is moved by ``inv(lidar2ego_key) @ inv(ego2global_key) @ ego2global_i @ lidar2ego_i`` (computed in
  float64, points stored back as float32, as the devkit does);
* the fifth column is the time lag ``1e-6 * t_key - 1e-6 * t_i`` in seconds (>= 0, 0 for the keyframe).

Output: float32 (N, 5) with the columns :data:`COLUMNS`, the keyframe's points first, then each earlier sweep's,
each in stored (file) order. Differences from the devkit, all from the store: coordinates are the stored ones
(quantised to 1 cm, so they differ from the point file by up to 5 mm per axis); non-finite input points (which
the devkit keeps as NaN rows) are dropped; the store's intensity is float16 (exact for nuScenes' integers).

A store built with ``--sweeps keyframes`` holds no sweeps between keyframes: asking it for more than one sweep is
an :class:`InputError` naming the version (``n_sweeps=1`` works on any store). So is a shard holding failed sweeps
(the store does not record where in the scene's time line a failed sweep was, so the previous sweeps of a
keyframe cannot be told from a gap): ``calico preprocess run ... --retry-failed`` recomputes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_catalog.reader import Shard, StoreVersion
from shared.errors import ConfigError, InputError

#: Columns of :func:`load_multisweep`'s output.
COLUMNS: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")

#: The per-point arrays read from each sweep (the per-sweep poses and timestamps are read whole, once a shard).
POINT_ARRAYS: tuple[str, ...] = ("xyz", "flags", "features")


@dataclass(frozen=True)
class MultiSweepConfig:
    """n_sweeps: sweeps in all, the keyframe included [nuScenes detectors: 10; 1: single-frame]; min_distance:
    half side in metres of the square around each sweep's sensor whose points are dropped [devkit: 1.0]."""

    n_sweeps: int = 10
    min_distance: float = 1.0

    def __post_init__(self):
        if isinstance(self.n_sweeps, bool) or not isinstance(self.n_sweeps, int) or self.n_sweeps < 1:
            raise ConfigError("n_sweeps", self.n_sweeps, "must be an integer >= 1")
        d = self.min_distance
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
            raise ConfigError("min_distance", d, "must be a finite number >= 0")


def sweep_index(shard: Shard, token: str) -> int:
    """Position of the sweep ``token`` (a LIDAR_TOP sample_data token, e.g. ``sample["data"]["LIDAR_TOP"]``) in
    ``shard``; :class:`InputError` naming the shard when it holds no such sweep."""
    try:
        return shard.tokens.index(token)
    except ValueError:
        raise InputError(f"no sweep {token} in the shard of scene {shard.scene}", shard.path) from None


def failed_sweeps(shard: Shard) -> list[str]:
    """Tokens of the sweeps the shard lacks because they failed (its errors table's ``error`` rows; tables of
    format 1 have no level column, and every row of them is an error)."""
    table = shard.errors_table()
    if table.num_rows == 0:
        return []
    tokens = table.column("token").to_pylist()
    if "level" not in table.column_names:
        return tokens
    return [t for t, lv in zip(tokens, table.column("level").to_pylist()) if lv == "error"]


def sweep_chain(version: StoreVersion, shard: Shard, index: int, n_sweeps: int) -> list[int]:
    """Shard positions of the sweeps of keyframe ``index``: itself, then each earlier one, ``n_sweeps`` at most
    (fewer at the start of the scene). :class:`InputError` when the version cannot give the previous sweeps
    (built with ``--sweeps keyframes``, or the shard holds failed sweeps) and ``n_sweeps > 1``."""
    n = len(shard)
    if not -n <= index < n:
        raise IndexError(f"sweep index {index} out of range for scene {shard.scene} with {n} sweeps")
    index %= n
    if n_sweeps == 1:
        return [index]
    mode = version.spec.get("sweeps")
    if mode != "all":
        raise InputError(f"store version {version.id} was preprocessed with --sweeps {mode}: it holds only the "
                         f"keyframes, not the previous sweeps that n_sweeps={n_sweeps} needs (keyframe "
                         f"{shard.tokens[index]} of scene {shard.scene}); rebuild it with `calico preprocess "
                         f"run --sweeps all` or use one sweep (--lidar-sweeps 1)", version.path)
    failed = failed_sweeps(shard)
    if failed:
        shown = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise InputError(f"scene {shard.scene} of store version {version.id} lacks {len(failed)} failed sweep(s) "
                         f"({shown}), so the previous sweeps of keyframe {shard.tokens[index]} are not known; "
                         f"`calico preprocess run ... --retry-failed` recomputes them, or use one sweep "
                         f"(--lidar-sweeps 1)", shard.path)
    return list(range(index, max(-1, index - n_sweeps), -1))


def sweep_to_keyframe(lidar2ego: np.ndarray, ego2global: np.ndarray, i: int, key: int) -> np.ndarray:
    """(4, 4) float64: sweep ``i``'s LiDAR frame -> its ego -> global -> keyframe ``key``'s ego -> its LiDAR
    frame, from the shard's stacked (S, 4, 4) poses."""
    return (np.linalg.inv(lidar2ego[key]) @ np.linalg.inv(ego2global[key]) @ ego2global[i] @ lidar2ego[i])


def load_multisweep(version: StoreVersion, scene: str, index: int,
                    cfg: MultiSweepConfig = MultiSweepConfig()) -> np.ndarray:
    """The points of keyframe ``index`` of ``scene`` (a shard position, see :func:`sweep_index`) and its
    ``cfg.n_sweeps - 1`` previous sweeps in the keyframe's LiDAR frame: float32 (N, 5), :data:`COLUMNS`
    (see the module's docstring for the semantics and the errors)."""
    shard = version.scene(scene)
    chain = sweep_chain(version, shard, index, cfg.n_sweeps)
    key = chain[0]
    lidar2ego, ego2global = shard.array("lidar2ego"), shard.array("ego2global")
    stamps = shard.array("timestamp")
    t_key = 1e-6 * int(stamps[key])
    parts = []
    for i in chain:
        sw = shard.sweep(i, POINT_ARRAYS)
        if sw.raw["features"].shape[1] == 0:
            raise InputError(f"the shard of scene {shard.scene} stores no intensity (no feature columns)",
                             shard.path)
        xyz = sw.xyz
        keep = sw.finite & ~((np.abs(xyz[:, 0]) < cfg.min_distance) & (np.abs(xyz[:, 1]) < cfg.min_distance))
        m = sweep_to_keyframe(lidar2ego, ego2global, i, key)
        out = np.empty((int(keep.sum()), 5), np.float32)
        out[:, :3] = xyz[keep].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
        out[:, 3] = sw.raw["features"][keep, 0]
        out[:, 4] = t_key - 1e-6 * int(stamps[i])
        parts.append(out)
    return np.concatenate(parts, axis=0)
