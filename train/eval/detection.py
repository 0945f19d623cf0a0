"""Detection results in the nuScenes result format, and nuscenes-devkit's ``DetectionEval`` run on them.

* :func:`split_sample_tokens`: the sample tokens of a devkit split (``val``, ``mini_val``, ...).
* :func:`gt_submission`: the ground truth of a split as a submission (the score a perfect detector gets).
* :func:`box_dicts` + :func:`make_submission`: a detector's global-frame boxes (:class:`train.data.boxes.GlobalBoxes`)
  as the devkit's box dicts, at most :data:`MAX_BOXES_PER_SAMPLE` per sample, every sample of the split listed,
  ``meta`` with the modalities used; :func:`write_submission` writes it atomically.
* :func:`evaluate_detection`: devkit's ``DetectionEval`` (``detection_cvpr_2019`` by default) on a submission,
  with devkit 1.2.0's crash on a sample set without any box worked around.

Attributes: the detectors here predict none, so :func:`default_attribute` picks one from the class and the speed as
CenterPoint's and mmdetection3d's nuScenes output code does (moving vehicles ``vehicle.moving``, moving cycles
``cycle.with_rider``, a standing pedestrian below 0.2 m/s, else the class's most frequent attribute).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import InputError
from train.checkpoint import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from nuscenes.nuscenes import NuScenes

    from train.data.boxes import GlobalBoxes

#: The devkit's limit on boxes per sample in a submission.
MAX_BOXES_PER_SAMPLE = 500

#: Speed (m/s) above which an object counts as moving for :func:`default_attribute` (CenterPoint, mmdet3d).
MOVING_SPEED = 0.2

#: The attribute of a class when the speed rule gives none (mmdetection3d's ``NuScenesDataset.DefaultAttribute``).
DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
    "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "barrier": "", "traffic_cone": "",
}

_VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")


def default_attribute(name: str, speed: float) -> str:
    """The attribute name submitted with a box of class ``name`` moving at ``speed`` m/s (see the module notes)."""
    if speed > MOVING_SPEED:
        if name in _VEHICLES:
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
    else:
        if name == "pedestrian":
            return "pedestrian.standing"
        if name == "bus":
            return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[name]


def split_sample_tokens(nusc: "NuScenes", split: str) -> list[str]:
    """Tokens of the samples whose scene is in devkit's split ``split`` (``mini_val``, ``val``, ...), in table
    order; :class:`InputError` when the split is unknown or none of its scenes is in this dataroot."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise InputError(f"unknown split {split!r}; devkit splits: {', '.join(sorted(splits))}", nusc.dataroot)
    names = set(splits[split])
    scenes = {s["token"] for s in nusc.scene if s["name"] in names}
    if not scenes:
        raise InputError(f"no scene of split {split!r} in {nusc.version}", nusc.dataroot)
    return [s["token"] for s in nusc.sample if s["scene_token"] in scenes]


def submission_meta(use_lidar: bool = True, use_camera: bool = False) -> dict[str, bool]:
    """The ``meta`` block of a submission: the modalities used (no radar, map or external data)."""
    return {"use_camera": bool(use_camera), "use_lidar": bool(use_lidar), "use_radar": False, "use_map": False,
            "use_external": False}


def gt_submission(nusc: "NuScenes", split: str, score: float = 1.0, skip_empty: bool = True) -> dict:
    """The ground truth of ``split`` as a detection submission in the nuScenes result format.

    ``{"meta": {...}, "results": {sample_token: [box dict, ...]}}`` with every sample of the split present.
    Each annotation whose category maps to a detection class (``category_to_detection_name``) becomes a box with
    the annotation's translation/size/rotation, velocity (vx, vy) from ``nusc.box_velocity`` (NaN where devkit
    cannot estimate one), its attribute name ('' when none) and ``detection_score = score``.

    ``skip_empty``: leave out annotations with no LiDAR and no radar point. ``DetectionEval`` drops those from
    the ground truth but cannot drop predictions by point count, so submitting them would count them as false
    positives (on the generated ``tiny`` mini_val that costs the car class a quarter of its AP).
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    attr_name = {a["token"]: a["name"] for a in nusc.attribute}
    results: dict[str, list[dict]] = {}
    for token in split_sample_tokens(nusc, split):
        boxes = []
        for ann_token in nusc.get("sample", token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            if skip_empty and ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            attrs = ann["attribute_tokens"]
            boxes.append(
                {
                    "sample_token": token,
                    "translation": [float(v) for v in ann["translation"]],
                    "size": [float(v) for v in ann["size"]],
                    "rotation": [float(v) for v in ann["rotation"]],
                    "velocity": [float(v) for v in nusc.box_velocity(ann_token)[:2]],
                    "detection_name": name,
                    "detection_score": float(score),
                    "attribute_name": attr_name[attrs[0]] if attrs else "",
                }
            )
        results[token] = boxes
    return {"meta": submission_meta(), "results": results}


def box_dicts(sample_token: str, boxes: "GlobalBoxes") -> list[dict]:
    """The devkit box dicts of one sample's global-frame boxes, highest score first, at most
    :data:`MAX_BOXES_PER_SAMPLE`; the attribute from :func:`default_attribute`."""
    from train.data.boxes import DETECTION_CLASSES

    order = np.argsort(-np.asarray(boxes.scores), kind="stable")[:MAX_BOXES_PER_SAMPLE]
    out = []
    for i in order:
        name = DETECTION_CLASSES[int(boxes.labels[i])]
        vel = [float(v) for v in boxes.velocity[i]]
        out.append({
            "sample_token": sample_token,
            "translation": [float(v) for v in boxes.translation[i]],
            "size": [float(v) for v in boxes.size[i]],
            "rotation": [float(v) for v in boxes.rotation[i]],
            "velocity": vel,
            "detection_name": name,
            "detection_score": float(boxes.scores[i]),
            "attribute_name": default_attribute(name, math.hypot(*vel)),
        })
    return out


def make_submission(results: Mapping[str, Sequence[dict]], sample_tokens: Sequence[str],
                    meta: Mapping[str, bool] | None = None) -> dict:
    """A submission listing every token of ``sample_tokens`` (those without boxes with an empty list).

    ``results``: ``{sample_token: box dicts}`` (from :func:`box_dicts`). :class:`InputError` for a sample not in
    ``sample_tokens`` or one with more than :data:`MAX_BOXES_PER_SAMPLE` boxes.
    """
    tokens = list(sample_tokens)
    extra = sorted(set(results) - set(tokens))
    if extra:
        raise InputError(f"{len(extra)} result sample(s) not in the evaluated split, e.g. {extra[0]}")
    for t, boxes in results.items():
        if len(boxes) > MAX_BOXES_PER_SAMPLE:
            raise InputError(f"sample {t} has {len(boxes)} boxes; the devkit allows {MAX_BOXES_PER_SAMPLE}")
    return {"meta": dict(meta if meta is not None else submission_meta()),
            "results": {t: list(results.get(t, ())) for t in tokens}}


def write_submission(submission: Mapping[str, Any], path: str | Path) -> Path:
    """Write a submission dict as JSON, atomically (NaN velocities written as ``NaN``, which devkit reads back)."""
    return atomic_write_text(path, json.dumps(submission))


@contextlib.contextmanager
def _tolerate_empty_predictions():
    """devkit 1.2.0's ``filter_eval_boxes`` raises ``Exception('Invalid box type: None')`` on a box set with no box
    at all (it looks at the first box to learn the class field). Filtering an empty set yields the empty set, so
    skip it there."""
    import nuscenes.eval.detection.evaluate as ev

    original = ev.filter_eval_boxes

    def patched(nusc, eval_boxes, max_dist, verbose=False):
        if all(len(b) == 0 for b in eval_boxes.boxes.values()):
            return eval_boxes
        return original(nusc, eval_boxes, max_dist, verbose=verbose)

    ev.filter_eval_boxes = patched
    try:
        yield
    finally:
        ev.filter_eval_boxes = original


def evaluate_detection(
    nusc: "NuScenes",
    submission: Mapping[str, Any] | str | Path,
    eval_set: str,
    output_dir: str | Path,
    config: str = "detection_cvpr_2019",
    verbose: bool = False,
    render_curves: bool = False,
    plot_examples: int = 0,
) -> dict:
    """Run devkit's ``DetectionEval`` (``config_factory(config)``) on a submission (dict or JSON path).

    Returns the metrics summary dict (``mean_ap``, ``nd_score``, ``tp_errors``, ``mean_dist_aps``,
    ``label_tp_errors``, ...), also written to ``output_dir/metrics_summary.json``. ``render_curves``: the devkit's
    own plots into ``output_dir/plots/`` (precision-recall per class and per distance, TP error curves, a summary;
    matplotlib, Agg); ``plot_examples``: that many samples drawn with their boxes into ``output_dir/examples/``.
    A submission must list every sample of ``eval_set`` (possibly with no boxes): else :class:`InputError`.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    output_dir = Path(output_dir)
    if isinstance(submission, (str, Path)):
        result_path = Path(submission)
        if not result_path.is_file():
            raise InputError("submission file not found", result_path)
        submission = json.loads(result_path.read_text())
    else:
        result_path = write_submission(submission, output_dir / "submission.json")
    expected = set(split_sample_tokens(nusc, eval_set))
    given = set(submission.get("results", {}))
    if given != expected:
        raise InputError(
            f"submission must list exactly the {len(expected)} samples of {eval_set!r}: "
            f"{len(expected - given)} missing, {len(given - expected)} not in the split",
            result_path,
        )
    with _tolerate_empty_predictions(), contextlib.ExitStack() as stack:
        if not verbose:  # DetectionEval.main prints its table whatever `verbose` says; load_gt shows a tqdm bar
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        ev = DetectionEval(nusc, config=config_factory(config), result_path=str(result_path), eval_set=eval_set,
                           output_dir=str(output_dir), verbose=verbose)
        if render_curves or plot_examples:
            import matplotlib

            matplotlib.use("Agg")  # the devkit calls plt.savefig; no display here
        summary = ev.main(plot_examples=int(plot_examples), render_curves=bool(render_curves))
    return summary
