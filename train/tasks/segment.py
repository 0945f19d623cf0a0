"""BEV map-segmentation fine-tuning (METHOD.md section 4): the BEV map of the modality (LiDAR PointPillars, camera
LSS, or both fused: :class:`train.models.fuser.BevEncoder`), a small convolutional head, per-class sigmoid,
BCE + dice, and BEVFusion's IoU on the validation split.

Head: 3x3 conv + BatchNorm + ReLU twice (``seg_channels``), a 1x1 conv to the six classes of
:data:`train.data.maps.MAP_CLASSES`, on the backbone's output map; when the segmentation grid
(``seg_x_range``, ``seg_y_range``, ``seg_cell``) differs from that map (the LiDAR backbone's output grid, which
the camera map shares) the logits are resampled onto it with
``torch.nn.functional.grid_sample`` (bilinear, at the target cells' centres, zeros outside the map), as
BEVFusion's ``BEVGridTransform`` does; when it is the same grid nothing is resampled.

Loss: ``binary_cross_entropy_with_logits`` (mean over cells and classes) ``+ dice_weight x`` the soft dice loss
``1 - (2 sum(p g) + 1) / (sum p + sum g + 1)`` per class over the batch, averaged over the classes. Logged:
``loss``, ``bce``, ``dice``.

Evaluation (every ``eval_every`` steps and at the end): sigmoid probabilities of the validation keyframes (no
augmentation) against their rasters, :func:`train.eval.segmentation.accumulate` over the split and
:func:`train.eval.segmentation.scores` (the best IoU over the thresholds 0.35-0.65 per class, then the mean):
``mIoU`` and ``IoU/<class>``. The best checkpoint is the one of the highest mIoU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.config import TrainConfig
from train.data.maps import MAP_CLASSES, BevGrid
from train.models.fuser import BevEncoder
from train.tasks.finetune import FinetuneTask, eval_batches


def bev_resample(x: torch.Tensor, point_range, grid: BevGrid) -> torch.Tensor:
    """(B, C, H, W) maps covering ``point_range``'s xy (row = y, column = x) read bilinearly at the cell centres
    of ``grid`` -> (B, C, ny, nx); zeros outside the source map."""
    xs, ys = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in grid.cell_centres())
    x0, y0, x1, y1 = point_range[0], point_range[1], point_range[3], point_range[4]
    gx = 2 * (xs - x0) / (x1 - x0) - 1  # align_corners=False: -1 / 1 are the map's outer edges
    gy = 2 * (ys - y0) / (y1 - y0) - 1
    g = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (ny, nx, 2) as (x, y)
    return F.grid_sample(x, g.expand(x.shape[0], -1, -1, -1), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def same_grid(point_range, cell: float, grid: BevGrid) -> bool:
    return (tuple(grid.x_range) == (point_range[0], point_range[3])
            and tuple(grid.y_range) == (point_range[1], point_range[4]) and grid.cell == cell)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss per class over the batch, averaged over the classes (module docstring)."""
    p = torch.sigmoid(logits.float())
    g = target.float()
    inter = (p * g).sum(dim=(0, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + g.sum(dim=(0, 2, 3)) + 1)).mean()


class SegmentationModel(BevEncoder):
    """The BEV map of the modality (:class:`train.models.fuser.BevEncoder`: ``self.backbone``, ``self.camera``,
    ``self.fuser``) + the segmentation head (``self.head``) (module docstring)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        from train.data.finetune import seg_grid

        bb, ft = cfg.backbone, cfg.finetune
        c = ft.seg_channels
        self.head = nn.Sequential(
            nn.Conv2d(self.out_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, len(MAP_CLASSES), 1))
        self.grid, self.point_range = seg_grid(ft), bb.point_range
        self.resample = not same_grid(bb.point_range, bb.out_cell, self.grid)
        self.dice_weight = ft.dice_weight

    def predict(self, batch: dict) -> torch.Tensor:
        """(B, 6, ny, nx) logits on the segmentation grid."""
        logits = self.head(self.bev(batch))
        return bev_resample(logits, self.point_range, self.grid) if self.resample else logits

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.predict(batch)
        target = batch["seg"].float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), target)
        dice = dice_loss(logits, target)
        return {"loss": bce + self.dice_weight * dice, "bce": bce.detach(), "dice": dice.detach()}


def segmentation_report(model: SegmentationModel, stream, batch_size: int) -> dict:
    """:func:`train.eval.segmentation.scores` of ``model`` over every keyframe of ``stream``."""
    from train.eval.segmentation import accumulate, scores

    pairs = ((torch.sigmoid(model.predict(b).float()), b["seg"]) for b in eval_batches(model, stream, batch_size))
    return scores(accumulate(pairs, len(MAP_CLASSES)), MAP_CLASSES)


class SegmentTask(FinetuneTask):
    """Map-segmentation fine-tuning as a task of :func:`train.loop.train` (module docstring)."""

    task = "seg"
    title = "map-segmentation fine-tuning"
    best_metric = ("mIoU", "max")

    model_class = SegmentationModel

    def evaluate(self, model: SegmentationModel) -> dict:
        report = segmentation_report(model, self.eval_stream(), self.cfg.data.batch_size)
        self.last_report = report
        return {"mIoU": report["mIoU"]} | {f"IoU/{c}": v["iou@max"] for c, v in report["classes"].items()}


def segmentation_table(report: dict) -> str:
    """The per-class table of :func:`segmentation_report` (IoU at the best threshold, that threshold), Markdown,
    then mIoU."""
    rows = ["| class | IoU | best threshold |", "|---|---|---|"]
    for name, v in report["classes"].items():
        rows.append(f"| {name} | {v['iou@max']:.4f} | {v['best_threshold']} |")
    return "\n".join(rows) + f"\n\nmIoU {report['mIoU']:.4f}\n"
