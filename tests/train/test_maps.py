"""Map rasters on the BEV grid (train/data/maps.py) and BEVFusion's segmentation IoU (train/eval/segmentation.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from shared.augment_params import inverse_matrix
from shared.errors import ConfigError, InputError
from train.data.maps import MAP_CLASSES, BevGrid, keyframe_raster, load_maps, rasterise
from train.eval.segmentation import THRESHOLDS, accumulate, sample_counts, scores

#: A hand-made map around global (500, 500): a 10 m square, a triangle (walkway) and a divider along y = 530.
SQUARE = np.array([[510.1, 495.1], [520.1, 495.1], [520.1, 505.1], [510.1, 505.1]])
TRIANGLE = np.array([[480.0, 470.0], [495.0, 480.0], [470.0, 490.0]])
DIVIDER = np.array([[450.0, 530.0], [550.0, 530.0]])


def _pose(x: float, y: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:2, 3] = (x, y)
    return m


def _write_map(root, square=SQUARE, triangle=TRIANGLE, divider=DIVIDER):
    from nuscenes.map_expansion.map_api import NuScenesMap

    from shared.synth.map_expansion import SceneMap, expansion_bytes

    sm = SceneMap(drivable_area=(square,), walkway=(triangle,), carpark_area=(), ped_crossing=(), stop_line=(),
                  stop_line_crossing=(), road_divider=(divider,), lane_divider=(), extent=(1000.0, 1000.0))
    (root / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "expansion" / "boston-seaport.json").write_bytes(expansion_bytes([sm], 0, "boston-seaport"))
    return NuScenesMap(str(root), "boston-seaport")


@pytest.fixture(scope="module")
def hand_map(tmp_path_factory):
    return _write_map(tmp_path_factory.mktemp("hand_map"))


def test_a_known_polygon_lands_on_the_hand_computed_cells(hand_map, tmp_path):
    """Sensor at (500, 500), yaw 0: the square x in [10.1, 20.1], y in [-4.9, 5.1] (LiDAR frame). The patch is
    shifted half a cell so devkit pixel k samples cell centre -50 + (k + 0.5) * 0.5; the devkit rounds the
    vertices to the nearest pixel and fills inclusively: x 10.1 -> pixel (10.1 + 49.75) / 0.5 = 119.7 -> 120,
    x 20.1 -> 139.7 -> 140; y -4.9 -> 89.7 -> 90, y 5.1 -> 109.7 -> 110. Row = y, column = x."""
    r = rasterise(hand_map, _pose(500.0, 500.0, 0.0))
    assert r.shape == (6, 200, 200) and r.dtype == np.uint8
    rows, cols = np.nonzero(r[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (90, 110, 120, 140)
    assert r[0].sum() == 21 * 21
    # the same square seen by a sensor turned by 90 degrees (its x axis = global +y): LiDAR-frame square unchanged
    yaw = math.pi / 2
    turned = 500.0 + (SQUARE - 500.0) @ np.array([[0.0, 1.0], [-1.0, 0.0]])  # rotate the offsets by +90 degrees
    r90 = rasterise(_write_map(tmp_path, square=turned, triangle=TRIANGLE), _pose(500.0, 500.0, yaw))
    np.testing.assert_array_equal(r90[0], r[0])
    # the divider at LiDAR y = 30 (thickness 2 px as the devkit draws lines): rows within 1 m of y = 30 only
    _, ys = BevGrid().cell_centres()
    div_rows = np.unique(np.nonzero(r[MAP_CLASSES.index("divider")])[0])
    assert len(div_rows) and np.all(np.abs(ys[div_rows] - 30.0) <= 1.0) and 159 in div_rows
    assert r[MAP_CLASSES.index("walkway")].sum() > 0 and r[MAP_CLASSES.index("ped_crossing")].sum() == 0


def test_flips_and_a_quarter_turn_move_the_raster_exactly(hand_map):
    l2g = _pose(500.0, 500.0, 0.0)
    base = rasterise(hand_map, l2g)
    fx = rasterise(hand_map, l2g, aug=np.array([0, 1, 1, 0, 0, 0, 0], np.float32))
    np.testing.assert_array_equal(fx, base[:, :, ::-1])
    fy = rasterise(hand_map, l2g, aug=np.array([0, 1, 0, 1, 0, 0, 0], np.float32))
    np.testing.assert_array_equal(fy, base[:, ::-1, :])
    # q = Rz(90) p: cell (i, j) of the view holds p = (y_i, -x_j), i.e. base[ny - 1 - j, i] (polygon layers)
    turn = rasterise(hand_map, l2g, aug=np.array([math.pi / 2, 1, 0, 0, 0, 0, 0], np.float32))
    np.testing.assert_array_equal(turn[0], np.rot90(base[0], k=-1))
    ident = rasterise(hand_map, l2g, aug=np.array([0, 1, 0, 0, 0, 0, 5.0], np.float32))
    np.testing.assert_array_equal(ident, base)


@pytest.mark.parametrize("trial", range(4))
def test_augmented_raster_labels_the_points_the_augmentation_moves_there(hand_map, trial):
    """For random views (rotation, scale, flips, translation) and sensor poses, every cell whose preimage lies more
    than one (pre-image) cell from a polygon's boundary carries that polygon's label."""
    rng = np.random.default_rng(trial)
    grid = BevGrid()
    l2g = _pose(500 + rng.uniform(-5, 5), 500 + rng.uniform(-5, 5), rng.uniform(-3, 3))
    aug = np.array([rng.uniform(-3, 3), rng.uniform(0.9, 1.1), trial % 2, trial // 2, rng.uniform(-2, 2),
                    rng.uniform(-2, 2), 0.2], np.float32)
    r = rasterise(hand_map, l2g, grid, aug)
    xs, ys = grid.cell_centres()
    X, Y = np.meshgrid(xs, ys)
    q = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size), np.ones(X.size)])
    g = (l2g @ inverse_matrix(aug) @ q)[:2].T
    for k, poly in ((0, shapely.Polygon(SQUARE)), (MAP_CLASSES.index("walkway"), shapely.Polygon(TRIANGLE))):
        inside = shapely.contains_xy(poly, g[:, 0], g[:, 1])
        sure = shapely.distance(poly.exterior, shapely.points(g)) > grid.cell / float(aug[1])
        assert inside[sure].sum() > 50
        np.testing.assert_array_equal(r[k].ravel().astype(bool)[sure], inside[sure])


def test_generated_keyframes_raster_on_the_road_and_score_miou_one(synth_nusc, synth_root):
    """On the tiny dataset: the LiDAR's cell is drivable in every keyframe, the layers the scenes have appear, and
    the ground-truth rasters scored as predictions give mIoU 1.0 over the classes present."""
    root, _ = synth_root
    maps = load_maps(root, [log["location"] for log in synth_nusc.log])
    grid = BevGrid()
    rasters = [keyframe_raster(synth_nusc, maps, s["token"], grid) for s in synth_nusc.sample]
    for r in rasters:
        assert r[0, 99:101, 99:101].all()  # the sensor sits at the grid centre, on the road
    present = np.stack(rasters).any(axis=(0, 2, 3))
    for name in ("drivable_area", "ped_crossing", "walkway", "stop_line", "divider"):
        assert present[MAP_CLASSES.index(name)], name
    rep = scores(accumulate(((r.astype(np.float32), r) for r in rasters), len(MAP_CLASSES)), MAP_CLASSES)
    assert rep["mIoU"] == 1.0
    assert rep["classes_scored"] == [c for c, p in zip(MAP_CLASSES, present, strict=True) if p]


def test_bad_inputs_are_named(tmp_path, synth_nusc):
    with pytest.raises(ConfigError, match="x_range"):
        BevGrid(x_range=(-50.0, 50.2))
    with pytest.raises(ConfigError, match="cell"):
        BevGrid(cell=0.0)
    with pytest.raises(InputError, match="no map expansion"):
        load_maps(tmp_path, ["boston-seaport"])
    with pytest.raises(InputError, match="not in the dataset"):
        keyframe_raster(synth_nusc, {}, "f" * 32)
    with pytest.raises(ConfigError, match="augment params"):
        rasterise(None, np.eye(4), aug=np.array([0, -1, 0, 0, 0, 0, 0], np.float32))


# ------------------------------------------------------------------------------------------- segmentation IoU
def test_hand_made_iou_per_threshold():
    """pred 0.3, 0.5, 0.7 against label 1, 1, 0: positives at t <= 0.5 are cells 2 and 3 (TP 1, FP 1, FN 1: 1/3),
    at t > 0.5 cell 3 only (TP 0: IoU 0); the best is 1/3 at 0.35."""
    pred = np.array([0.3, 0.5, 0.7]).reshape(1, 1, 3)
    label = np.array([1, 1, 0]).reshape(1, 1, 3)
    rep = scores(sample_counts(pred, label), ["c"])
    for t in THRESHOLDS:
        assert rep["classes"]["c"][f"iou@{t:.2f}"] == pytest.approx(1 / 3 if t <= 0.5 else 0.0)
    assert rep["classes"]["c"]["iou@max"] == pytest.approx(1 / 3) and rep["classes"]["c"]["best_threshold"] == 0.35
    assert rep["mIoU"] == pytest.approx(1 / 3)


def test_constant_prediction_and_split_accumulation():
    """A constant 0.5 is positive everywhere for t <= 0.5: IoU = |label| / cells; summed counts over the split, not
    a mean of per-sample IoUs; a class with no label and no prediction is left out of mIoU."""
    rng = np.random.default_rng(0)
    label = (rng.random((3, 2, 20, 30)) < 0.3).astype(np.uint8)
    label[:, 1] = 0  # class 1 empty everywhere
    pred = np.full(label.shape, 0.5, np.float32)
    pred[:, 1] = 0.0
    rep = scores(accumulate(zip(pred, label, strict=True), 2), ["a", "b"])
    assert rep["classes"]["a"]["iou@max"] == pytest.approx(label[:, 0].sum() / label[:, 0].size)
    assert rep["classes"]["a"]["iou@0.55"] == 0.0
    assert math.isnan(rep["classes"]["b"]["iou@max"]) and rep["classes_scored"] == ["a"]
    assert rep["mIoU"] == pytest.approx(rep["classes"]["a"]["iou@max"])
    # sample 1 all right (100 cells), sample 2 misses its single cell: 100 / 101, not (1 + 0) / 2
    ones, miss = np.ones((1, 10, 10)), np.zeros((1, 10, 10))
    one_cell = miss.copy()
    one_cell[0, 0, 0] = 1
    rep = scores(accumulate([(ones, ones), (miss, one_cell)], 1), ["a"])
    assert rep["mIoU"] == pytest.approx(100 / 101)


def test_segmentation_takes_torch_batches_and_rejects_shape_mismatch():
    import torch

    label = torch.zeros(2, 3, 8, 8)
    label[:, :, :4] = 1
    rep = scores(sample_counts(label.clone(), label), ["a", "b", "c"])
    assert rep["mIoU"] == 1.0
    with pytest.raises(ConfigError, match="pred/label"):
        sample_counts(np.zeros((3, 8, 8)), np.zeros((3, 8, 9)))
