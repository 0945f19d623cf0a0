"""Training tasks: each owns its stream, its model (``forward(batch) -> {"loss", ...}``), its parameter groups,
what is frozen and its evaluation; :func:`train.loop.train` runs any of them."""
