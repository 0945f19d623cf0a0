"""Networks: :mod:`train.models.pointpillars` (LiDAR), :mod:`train.models.camera` (timm image backbone + FPN),
:mod:`train.models.lss` (lift-splat-shoot view transform to BEV)."""
