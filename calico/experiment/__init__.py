"""The CALICO experiment (``calico experiment``): the label-efficiency grid and its alpha ablation, resumable.

* :mod:`calico.experiment.plan`: the grid as frozen dataclasses (:class:`~calico.experiment.plan.Unit`: a
  pre-training stage or a fine-tuning cell, its stable id, dependencies and resolved ``TrainConfig``) and the
  checks of a rerun against what an earlier run recorded;
* :mod:`calico.experiment.run`: executing a plan (the store, then the stages and cells in dependency order, in
  this process or as Dask tasks), with ``cell.json`` / ``done.json`` per unit;
* :mod:`calico.experiment.report`: the tables (Markdown, CSV, JSON), the plots and the listing, rebuilt from the
  run folders alone.

See docs/experiments.md. Like every module under ``calico/``, these may import every wing.
"""
