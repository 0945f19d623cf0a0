"""Training streams over a store version: the generic split (:mod:`train.data.stream`) and one module per
task's batches (:mod:`train.data.prc` for PRC, :mod:`train.data.camera` for RAD's images + points)."""
from .camera import CameraStream, collate_rad
from .prc import PRC_ARRAYS, PRCStream, build_views, collate_prc, load_points, sample_points
from .stream import Item, StoreStream

__all__ = ["PRC_ARRAYS", "CameraStream", "Item", "PRCStream", "StoreStream", "build_views", "collate_prc",
           "collate_rad", "load_points", "sample_points"]
