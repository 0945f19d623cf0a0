"""The region-cache store: versioned Zarr v3 + Parquet stores written by ``preprocess.run`` (see docs/store.md).

* :mod:`data_catalog.version`: store version ids (content hash of dataset, parameters and code).
* :mod:`data_catalog.format`: the arrays of a shard, their dtypes and units, the encoding of a sweep.
* :mod:`data_catalog.layout`: version and shard folders, manifests, table names, atomic file writes.
* :mod:`data_catalog.writer`: :class:`~data_catalog.writer.ShardWriter`, atomic shard commits, linked shards.
* :mod:`data_catalog.versions`: ``version.json`` documents, listing versions, run records.
* :mod:`data_catalog.tables`: the Parquet tables (per sweep, errors, per scene) and ``finalize``.
* :mod:`data_catalog.audit`: the object-recovery audit columns of those tables.
* :mod:`data_catalog.reader`: :func:`open_version` and zero-copy sweep views for trainers.
* :mod:`data_catalog.verify`: checks every shard against its manifest.
"""
from data_catalog.reader import Shard, StoreVersion, Sweep, open_version
from data_catalog.version import FORMAT_VERSION, VersionSpec

__all__ = ["FORMAT_VERSION", "Shard", "StoreVersion", "Sweep", "VersionSpec", "open_version"]
