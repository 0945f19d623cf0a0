"""``calico preprocess ...``. (Owned by the preprocessing work; placeholder.)"""
from __future__ import annotations

import typer

app = typer.Typer(help="Preprocess LiDAR sweeps: ground removal, clustering, projection, augmentation.",
                  no_args_is_help=True)
