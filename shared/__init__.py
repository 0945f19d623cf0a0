"""Common code of calico: errors, paths, point-file I/O, nuScenes reading, the synthetic dataset.

Imports none of ``preprocess``, ``train`` or ``data_catalog``.
"""
