"""The region-cache store: versioned Zarr v3 + Parquet stores written by ``preprocess.run`` (see docs/store.md).

* :mod:`data_catalog.version`: store version ids (content hash of dataset, parameters and code).
* :mod:`data_catalog.store`: layout, encoding, atomic shard commits, derived tables.
* :mod:`data_catalog.reader`: :func:`open_version` and zero-copy sweep views for trainers.
* :mod:`data_catalog.verify`: checks every shard against its manifest.
"""
from data_catalog.reader import Shard, StoreVersion, Sweep, open_version
from data_catalog.version import FORMAT_VERSION, VersionSpec

__all__ = ["FORMAT_VERSION", "Shard", "StoreVersion", "Sweep", "VersionSpec", "open_version"]
