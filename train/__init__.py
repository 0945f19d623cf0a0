"""Training on the region-cache store: the streaming loader (:mod:`train.data`), configuration
(:mod:`train.config`), checkpoints (:mod:`train.checkpoint`) and the PRC pre-training loop (:mod:`train.loop`).

``train/`` reads the store only through :mod:`data_catalog` and never imports ``preprocess/``.
"""
