"""Per-sweep preprocessing stages (one module per stage, pure functions over numpy arrays).

Kernels: :mod:`preprocess.ground` (RANSAC ground removal), :mod:`preprocess.cluster` (DBSCAN),
:mod:`preprocess.pooling` (semantic pooling: cluster filters and region ids).
"""
