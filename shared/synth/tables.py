"""The nuScenes tables: constant ones (category, attribute, visibility, sensor), deterministic tokens,
scene names from the devkit's official splits, and writing the 13 JSON files."""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
from pathlib import Path

from shared.errors import InputError
from shared.records import CAMERAS

#: All 32 nuScenes categories with their lidarseg index (as the v1.0 category.json).
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("noise", "Any lidar return that does not correspond to a physical object."),
    ("animal", "All animals."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker."),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure the bicycles in a row."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
    ("flat.driveable_surface", "All paved or unpaved surfaces that a car can drive on."),
    ("flat.other", "All other forms of horizontal ground-level structures."),
    ("flat.sidewalk", "Sidewalk, pedestrian walkways, bike paths, etc."),
    ("flat.terrain", "Natural horizontal surfaces such as ground level horizontal vegetation."),
    ("static.manmade", "Includes man-made structures but not limited to buildings, walls, poles."),
    ("static.other", "Points in the background that are not distinguishable."),
    ("static.vegetation", "Any vegetation in the frame that is higher than the ground."),
    ("vehicle.ego", "The vehicle on which the sensors are mounted."),
)

ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no immediate intent to move."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

#: (token, level, description) as in nuScenes.
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

SENSORS: tuple[tuple[str, str], ...] = (("LIDAR_TOP", "lidar"),) + tuple((c, "camera") for c in CAMERAS)

LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility")


def token(seed: int, *key) -> str:
    """A deterministic 32-hex-digit token for a key (like nuScenes tokens)."""
    return hashlib.md5(("calico-synth/%d/" % seed + "/".join(str(k) for k in key)).encode()).hexdigest()


def visibility_token(fraction: float) -> str:
    """Visibility token ('1'..'4') of a visible fraction in [0, 1]."""
    return "1" if fraction < 0.4 else "2" if fraction < 0.6 else "3" if fraction < 0.8 else "4"


def scene_names(n: int, mini: bool) -> list[str]:
    """Official nuScenes scene names for n scenes: mini_train/mini_val for a mini set (the first two already
    include one of each), train/val otherwise (every fifth a val scene)."""
    splits = devkit_splits()
    if mini:
        tr, va = splits["mini_train"], splits["mini_val"]
        order = [tr[0], va[0], tr[1], tr[2], tr[3], va[1], tr[4], tr[5], tr[6], tr[7]]
        return order[:n]
    tr, va = splits["train"], splits["val"]
    out, it, iv = [], 0, 0
    for i in range(n):
        if i % 5 == 1 and iv < len(va):
            out.append(va[iv])
            iv += 1
        else:
            out.append(tr[it])
            it += 1
    return out


@functools.lru_cache(maxsize=1)
def devkit_splits() -> dict[str, list[str]]:
    """The scene-name lists ``train``, ``val``, ``mini_train``, ``mini_val`` of nuscenes-devkit's
    ``nuscenes/utils/splits.py``, read from its source (importing it would import the whole devkit, ~5 s)."""
    spec = importlib.util.find_spec("nuscenes")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("nuscenes-devkit is not installed; it holds the official scene names")
    path = Path(spec.submodule_search_locations[0]) / "utils" / "splits.py"
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("train_detect", "train_track", "val", "mini_train", "mini_val"):
                out[name] = list(ast.literal_eval(node.value))
    if len(out) == 5:  # as the devkit: train = sorted(set(train_detect + train_track))
        out["train"] = sorted(set(out.pop("train_detect") + out.pop("train_track")))
    if len(out) != 4:
        raise InputError(f"could not read the split lists (found {sorted(out)})", path)
    return out


def constant_tables(seed: int) -> dict[str, list[dict]]:
    """category, attribute, visibility and sensor tables."""
    return {
        "category": [{"token": token(seed, "category", n), "name": n, "description": d, "index": i}
                     for i, (n, d) in enumerate(CATEGORIES)],
        "attribute": [{"token": token(seed, "attribute", n), "name": n, "description": d} for n, d in ATTRIBUTES],
        "visibility": [{"token": t, "level": lv, "description": d} for t, lv, d in VISIBILITY],
        "sensor": [{"token": token(seed, "sensor", c), "channel": c, "modality": m} for c, m in SENSORS],
    }


def write_tables(table_dir: Path, tables: dict[str, list[dict]]) -> None:
    """Write every table as ``<name>.json`` (indented like nuScenes, deterministic key order)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    missing = set(TABLES) - set(tables)
    if missing:
        raise ValueError(f"tables missing: {sorted(missing)}")
    for name in TABLES:
        (table_dir / f"{name}.json").write_text(json.dumps(tables[name], indent=0))
