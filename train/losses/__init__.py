"""PRC losses, one per module: :func:`plrc_loss` (point-to-region) and :func:`rapc_loss` (region-aware point
contrast), with the RAPC per-point weights :func:`region_weights` (reused by RAD's distillation loss)."""
from .plrc import plrc_loss
from .rapc import rapc_loss, region_weights

__all__ = ["plrc_loss", "rapc_loss", "region_weights"]
