"""PRC losses, one per module: :func:`plrc_loss` (point-to-region) and :func:`rapc_loss` (region-aware point
contrast), with the RAPC per-point weights :func:`region_weights` (reused by RAD's distillation loss)."""
from .plrc import masked_log_softmax, plrc_from_log_probs, plrc_loss
from .rapc import rapc_from_log_probs, rapc_loss, region_weights

__all__ = ["masked_log_softmax", "plrc_from_log_probs", "plrc_loss", "rapc_from_log_probs", "rapc_loss",
           "region_weights"]
