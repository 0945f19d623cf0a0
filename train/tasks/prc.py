"""PRC (point-region contrast) pre-training model: a shared PointPillars backbone for both augmented views, bilinear
reading of the BEV map at the sampled points, a projection MLP, L2 normalisation and the PLRC + RAPC losses
(METHOD.md sections 2 and 4).

Batch contract (from ``train.data``): a dict with
    "points": (2, P, 4) float32, view 0 and view 1 of the same points in the same order,
    "batch_idx": (P,) int64 scan index of each point,
    "region": (P,) int64 region id (unique across the batch), -1 semantic-less,
    "sample_idx": (B, N+M) int64 indices into the P points (N semantic-rich, then M semantic-less per scan),
    "sample_valid": (B, N+M) bool,
    "batch_size": int B.
``PRCModel.forward(batch)`` returns {"loss", "plrc", "rapc"} scalars; "loss" = alpha * plrc + (1 - alpha) * rapc.
Both losses are symmetrised here: the mean of view 0 -> view 1 and view 1 -> view 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.bev import in_range, sample_bev_batched
from train.losses import masked_log_softmax, plrc_from_log_probs, rapc_from_log_probs
from train.model_config import PRCConfig
from train.models.pointpillars import PointPillars


class ProjectionHead(nn.Module):
    """(..., C) -> (..., proj_out) L2-normalised embeddings (Linear-ReLU-Linear, then F.normalize)."""

    def __init__(self, c_in: int, hidden: int, out: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)


class PRCModel(nn.Module):
    """PointPillars backbone (``self.backbone``, shared by both views) + projection head + PRC losses."""

    def __init__(self, cfg: PRCConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else PRCConfig()
        self.backbone = PointPillars(self.cfg.backbone)
        self.head = ProjectionHead(self.backbone.out_channels, self.cfg.proj_hidden, self.cfg.proj_out)

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings of the sampled points in both views.

        Returns:
            z0, z1: (B, K, D) float32 L2-normalised embeddings in view 0 and view 1;
            region: (B, K) int64 region of each sampled point (-1 semantic-less);
            valid: (B, K) bool, ``sample_valid`` and inside the map's xy range in both views.
        """
        points = batch["points"]
        batch_idx = batch["batch_idx"].long()
        sample_idx = batch["sample_idx"].long()
        b = int(batch["batch_size"])
        if points.ndim != 3 or points.shape[0] != 2 or points.shape[2] < 4:
            raise ValueError(f"batch['points'] must be (2, P, 4), got {tuple(points.shape)}")
        p = points.shape[1]
        if sample_idx.ndim != 2 or sample_idx.shape[0] != b:
            raise ValueError(f"batch['sample_idx'] must be ({b}, K), got {tuple(sample_idx.shape)}")
        valid = batch["sample_valid"].bool() & (sample_idx >= 0) & (sample_idx < p)
        idx = sample_idx.clamp(0, max(p - 1, 0))
        # One backbone pass over both views: view v of scan s is scan v * B + s.
        both = torch.cat([points[0], points[1]], dim=0)
        both_idx = torch.cat([batch_idx, batch_idx + b], dim=0)
        bev = self.backbone(both, both_idx, 2 * b)  # (2B, C, H, W)
        rng = self.cfg.backbone.point_range
        xy = torch.stack([points[0][idx][..., :2], points[1][idx][..., :2]])  # (2, B, K, 2)
        valid = valid & in_range(xy[0], rng) & in_range(xy[1], rng)
        feats = sample_bev_batched(bev, xy.reshape(2 * b, -1, 2), rng)  # (2B, K, C)
        z = self.head(feats).float()
        region = batch["region"].long()[idx]
        return z[:b], z[b:], region, valid

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """PRC losses of a batch (see the module docstring): {"loss", "plrc", "rapc"}, () float32 each."""
        z0, z1, region, valid = self.embed(batch)
        # Each direction's log-probabilities are computed once and shared by PLRC and RAPC.
        logp = [masked_log_softmax(za, zb, valid, self.cfg.tau) for za, zb in ((z0, z1), (z1, z0))]
        plrc = 0.5 * sum(plrc_from_log_probs(lp, region, valid) for lp in logp)
        rapc = 0.5 * sum(rapc_from_log_probs(lp, region, valid) for lp in logp)
        a = self.cfg.alpha
        return {"loss": a * plrc + (1.0 - a) * rapc, "plrc": plrc, "rapc": rapc}


class PRCTask:
    """PRC pre-training as a task of :func:`train.loop.train`: the :class:`train.data.prc.PRCStream` of
    ``cfg.data``, a :class:`PRCModel` (or ``model_fn(cfg)``), one parameter group, nothing frozen, no evaluation
    (``calico train probe`` scores a run afterwards)."""

    title = "PRC pre-training"

    def __init__(self, cfg, model_fn=None):
        self.cfg = cfg
        self.model_fn = model_fn

    def stream(self, rank: int, world: int):
        from train.data.prc import PRCStream, collate_prc

        d = self.cfg.data
        stream = PRCStream(d.store, d.version, n_rich=d.n_rich, n_less=d.n_less, seed=d.seed,
                           point_range=d.point_range, shuffle_scenes=d.shuffle_scenes, rank=rank, world_size=world,
                           global_batch=d.batch_size if d.global_batch else None,
                           verify_checksums=d.verify_shards)
        return stream, collate_prc

    def build_model(self) -> nn.Module:
        return self.model_fn(self.cfg) if self.model_fn is not None else PRCModel(self.cfg.prc)

    def frozen(self, model: nn.Module) -> list[nn.Module]:
        return []

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad], "lr_mult": 1.0}]

    def checkpoint_extra(self) -> dict:
        return {}

    def check_resume(self, state: dict) -> None:
        pass

    def evaluate(self, model: nn.Module) -> dict | None:
        return None
