"""Training streams over a store version: the generic split (:mod:`train.data.stream`) and one module per
task's batches (:mod:`train.data.prc`, :mod:`train.data.camera`)."""
from .prc import PRC_ARRAYS, PRCStream, build_views, collate_prc, load_points, sample_points
from .stream import Item, StoreStream

__all__ = ["PRC_ARRAYS", "Item", "PRCStream", "StoreStream", "build_views", "collate_prc", "load_points",
           "sample_points"]
