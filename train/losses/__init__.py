"""Losses, one per module: :func:`plrc_loss` (point-to-region) and :func:`rapc_loss` (region-aware point
contrast) of PRC, with the RAPC per-point weights :func:`region_weights`, reused by :func:`rad_loss`
(region-aware distillation, RAD); CenterPoint's detection losses :func:`gaussian_focal_loss` (heatmaps) and
:func:`center_l1_loss` (regression at the centre cells)."""
from .focal import gaussian_focal_loss
from .l1 import center_l1_loss, gather_at
from .plrc import masked_log_softmax, plrc_from_log_probs, plrc_loss
from .rad import WEIGHTINGS, rad_from_log_probs, rad_loss, uniform_weights
from .rapc import rapc_from_log_probs, rapc_loss, region_weights

__all__ = ["WEIGHTINGS", "center_l1_loss", "gather_at", "gaussian_focal_loss", "masked_log_softmax",
           "plrc_from_log_probs", "plrc_loss", "rad_from_log_probs", "rad_loss", "rapc_from_log_probs", "rapc_loss",
           "region_weights", "uniform_weights"]
