"""Shapely 2 fixes for nuscenes-devkit's map API (the devkit's map code was written against Shapely 1).

Two places break with Shapely 2, on real nuScenes maps as on generated ones:

* ``render_layers`` / ``render_map_patch`` draw polygons through ``descartes.PolygonPatch``, which reads
  ``numpy.asarray(polygon.exterior)``: a 0-d array under Shapely 2 (``IndexError: too many indices``);
* ``get_map_mask`` draws a line layer through ``NuScenesMapExplorer.mask_for_lines``, which iterates a
  ``MultiLineString`` directly (not iterable under Shapely 2): a divider that leaves the patch and comes back in
  raises ``TypeError``.

:func:`enable` replaces both with versions that do the same drawing (same path codes; ``cv2.polylines`` with
thickness 2 px on int32-truncated canvas coordinates, exactly as the devkit) through Shapely 2's ``.coords`` and
``.geoms``. It is idempotent and changes nothing else.
"""
from __future__ import annotations

import numpy as np

__all__ = ["enable", "mask_for_lines", "polygon_patch"]

#: Line thickness (canvas pixels) the devkit draws line layers with (``cv2.polylines(..., 1, 2)``).
LINE_THICKNESS_PX = 2


def polygon_patch(polygon, **kwargs):
    """A matplotlib ``PathPatch`` of a Shapely (2) Polygon or MultiPolygon, holes left unfilled whatever the rings'
    orientation."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path

    from shapely.geometry.polygon import orient

    # exterior counter-clockwise, holes clockwise: matplotlib fills by the non-zero winding rule
    parts = [orient(p, 1.0) for p in getattr(polygon, "geoms", [polygon])]
    rings = [r for p in parts for r in [p.exterior, *p.interiors]]
    vertices = np.concatenate([np.asarray(r.coords)[:, :2] for r in rings])
    codes = np.concatenate([np.r_[Path.MOVETO, np.full(len(r.coords) - 1, Path.LINETO)] for r in rings])
    return PathPatch(Path(vertices, codes.astype(Path.code_type)), **kwargs)


def mask_for_lines(lines, mask: np.ndarray) -> np.ndarray:
    """The devkit's ``mask_for_lines`` for a LineString or MultiLineString under Shapely 2."""
    import cv2

    for line in getattr(lines, "geoms", [lines]):
        coords = np.asarray(list(line.coords), np.int32).reshape((-1, 2))
        cv2.polylines(mask, [coords], False, 1, LINE_THICKNESS_PX)
    return mask


def enable() -> None:
    """Install :func:`polygon_patch` as ``descartes.PolygonPatch`` and :func:`mask_for_lines` as
    ``NuScenesMapExplorer.mask_for_lines``."""
    import descartes
    from nuscenes.map_expansion.map_api import NuScenesMapExplorer

    descartes.PolygonPatch = polygon_patch
    NuScenesMapExplorer.mask_for_lines = staticmethod(mask_for_lines)
