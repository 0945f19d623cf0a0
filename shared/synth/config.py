"""Configuration of the synthetic nuScenes-format dataset: :class:`SynthConfig` and its :data:`PRESETS`.

The sensor rig (LiDAR and camera extrinsics, camera intrinsics) is the one of the real nuScenes vehicle
(taken from the first keyframe of v1.0-mini scene-0061, see ``shared/fixtures``), so that calibration
handling downstream sees realistic numbers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from shared.errors import ConfigError
from shared.synth.world import max_extent

#: LiDAR (HDL-32E) mounting: (rotation quaternion w,x,y,z; translation x,y,z) of LIDAR_TOP in the ego frame.
LIDAR2EGO: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.70779552, -0.00649224, 0.01064621, -0.7063073),
    (0.943713, 0.0, 1.84023),
)

#: Six cameras: channel -> (quaternion w,x,y,z; translation; (fx, cx, fy, cy) at 1600x900).
CAMERA_RIG: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]] = {
    "CAM_FRONT": (
        (-0.49980156, 0.50303162, -0.4997798, 0.49737083), (1.700791, 0.015946, 1.510958),
        (1266.4172, 816.267, 1266.4172, 491.5071)),
    "CAM_FRONT_RIGHT": (
        (0.20603479, -0.20269405, 0.68245078, -0.67136108), (1.550848, -0.493405, 1.495748),
        (1260.8474, 807.9682, 1260.8474, 495.3344)),
    "CAM_BACK_RIGHT": (
        (-0.1228098, 0.13240084, 0.70043058, -0.69049604), (1.014878, -0.480568, 1.562395),
        (1259.5137, 807.2529, 1259.5137, 501.1958)),
    "CAM_BACK": (
        (0.50378728, -0.4974025, -0.49418503, 0.50454961), (0.028326, 0.003451, 1.579103),
        (809.221, 829.2196, 809.221, 481.7784)),
    "CAM_BACK_LEFT": (
        (-0.69241855, 0.70316194, 0.11648343, -0.11203318), (1.035691, 0.484795, 1.59097),
        (1256.7415, 792.1126, 1256.7415, 492.7757)),
    "CAM_FRONT_LEFT": (
        (0.6757265, -0.67362665, 0.21214014, -0.21122827), (1.523878, 0.494631, 1.509328),
        (1272.5979, 826.6155, 1272.5979, 479.7517)),
}

#: Native nuScenes image size (width, height) the intrinsics above belong to.
NATIVE_IMAGE_WH = (1600, 900)


@dataclass(frozen=True)
class SynthConfig:
    """How much synthetic data to write and how the simulated sensors behave.

    Sizes: ``scenes`` scenes of ``keyframes`` keyframes (2 Hz); the LiDAR runs at
    ``2 * sweeps_per_keyframe`` Hz (10 -> 20 Hz as nuScenes), non-keyframe sweeps are written to ``sweeps/``
    when ``write_sweeps``. Camera images (keyframes only) are ``image_width`` x ``image_height`` with the
    nuScenes intrinsics scaled to that size.
    LiDAR: ``n_azimuth`` columns of 32 beams per sweep (HDL-32E, ~1085 in nuScenes), maximum range
    ``max_range`` m, Gaussian range noise ``range_noise`` m, a base dropout probability ``dropout``. With
    ``keep_all_rays`` every ray yields a point as in real nuScenes files (a ray without a return becomes a
    point within 0.5 m of the sensor, a ray hitting the ego vehicle a self-return within ~2 m); otherwise
    those are left out.
    Annotations: objects whose centre lies within ``annotation_range`` m (xy) of the ego vehicle.
    ``density`` scales the number of traffic participants. With ``all_classes`` every scene gets, where its
    random traffic lacks one, a standing object of each of the ten detection classes that the LiDAR sees
    within devkit's class range at some keyframe (see :func:`shared.synth.generate.ensure_all_classes`).
    Layout: scene ``i`` lies at location ``i % 4`` (:data:`shared.synth.tables.LOCATIONS`); the ``k``-th scene
    of a location (``k = i // 4``) is moved by ``k * location_spacing`` m along global x, so that the scenes of
    one location lie apart in its map (:attr:`spacing`). None: the smallest multiple of 100 m at least
    :attr:`min_spacing`; 0: every scene at the global origin region (the layout before the spacing existed:
    the scenes of a location overlap).
    """

    name: str = "tiny"
    scenes: int = 2
    keyframes: int = 3
    sweeps_per_keyframe: int = 10
    write_sweeps: bool = True
    image_width: int = 400
    image_height: int = 225
    jpeg_quality: int = 90
    n_azimuth: int = 1085
    max_range: float = 100.0
    range_noise: float = 0.012
    dropout: float = 0.003
    keep_all_rays: bool = True
    annotation_range: float = 60.0
    density: float = 1.0
    all_classes: bool = True
    location_spacing: float | None = None

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError("name", self.name, "must be a non-empty alphanumeric name")
        for field in ("scenes", "keyframes", "sweeps_per_keyframe"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(field, v, "must be a positive integer")
        if self.scenes > 850:
            raise ConfigError("scenes", self.scenes, "at most 850 (the number of nuScenes trainval scene names)")
        if self.keyframes < 2:
            raise ConfigError("keyframes", self.keyframes, "at least 2 keyframes per scene")
        if not (64 <= self.image_width <= 4000 and 36 <= self.image_height <= 2250):
            raise ConfigError("image_width/image_height", (self.image_width, self.image_height),
                              "must lie within 64x36 .. 4000x2250")
        if not 10 <= self.jpeg_quality <= 100:
            raise ConfigError("jpeg_quality", self.jpeg_quality, "must lie in 10..100")
        if not 90 <= self.n_azimuth <= 4000:
            raise ConfigError("n_azimuth", self.n_azimuth, "must lie in 90..4000 (nuScenes: ~1085)")
        if not 10.0 <= self.max_range <= 300.0:
            raise ConfigError("max_range", self.max_range, "must lie in 10..300 m")
        if not 0.0 <= self.range_noise <= 0.5:
            raise ConfigError("range_noise", self.range_noise, "must lie in 0..0.5 m")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "must lie in [0, 1)")
        if not 5.0 <= self.annotation_range <= 200.0:
            raise ConfigError("annotation_range", self.annotation_range, "must lie in 5..200 m")
        if not 0.0 <= self.density <= 5.0:
            raise ConfigError("density", self.density, "must lie in 0..5")
        if not isinstance(self.all_classes, bool):
            raise ConfigError("all_classes", self.all_classes, "must be True or False")
        v = self.location_spacing
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError("location_spacing", v, "must be None, 0 or a number of metres")
            if v != 0 and v < self.min_spacing:
                raise ConfigError("location_spacing", v,
                                  f"must be 0 (overlapping scenes) or at least {self.min_spacing:g} m: a world's "
                                  f"largest extent {max_extent(self.duration):g} m plus the LiDAR range "
                                  f"{self.max_range:g} m")

    @property
    def is_mini(self) -> bool:
        """Mini-sized (at most 10 scenes): version ``v1.0-mini`` with the devkit's mini_train/mini_val names."""
        return self.scenes <= 10

    @property
    def version(self) -> str:
        """The nuScenes version string (folder of the tables)."""
        return "v1.0-mini" if self.is_mini else "v1.0-trainval"

    @property
    def duration(self) -> float:
        """Seconds from a scene's first keyframe to its last."""
        return (self.keyframes - 1) / 2.0

    @property
    def min_spacing(self) -> float:
        """The least positive ``location_spacing`` (m): the largest extent of a world of :attr:`duration`
        (:func:`shared.synth.world.max_extent`) plus the LiDAR range, so that two scenes of one location keep
        more than the LiDAR range between their extents."""
        return max_extent(self.duration) + self.max_range

    @property
    def spacing(self) -> float:
        """The offset (m, along global x) between consecutive scenes of one location (see ``location_spacing``)."""
        if self.location_spacing is None:
            return 100.0 * math.ceil(self.min_spacing / 100.0)
        return float(self.location_spacing)

    def scene_offset(self, idx: int, locations: int) -> tuple[float, float]:
        """Global (x, y) offset (m) of scene ``idx`` when the scenes cycle through ``locations`` locations."""
        return (idx // locations) * self.spacing, 0.0

    @property
    def lidar_hz(self) -> float:
        return 2.0 * self.sweeps_per_keyframe

    @property
    def sweeps_per_scene(self) -> int:
        """LiDAR sweeps per scene: each keyframe and the ``sweeps_per_keyframe - 1`` sweeps before it (so the
        first keyframe, too, has a full set of previous sweeps)."""
        return self.keyframes * self.sweeps_per_keyframe

    def with_scenes(self, scenes: int | None) -> SynthConfig:
        """This config with ``scenes`` scenes (unchanged when None)."""
        if scenes is None:
            return self
        if isinstance(scenes, bool) or not isinstance(scenes, int) or scenes <= 0:
            raise ConfigError("scenes", scenes, "must be a positive integer")
        return dataclasses.replace(self, scenes=scenes)


#: Named presets: ``tiny`` for tests, ``small`` (alias ``demo``) for the README's demo, ``mini`` v1.0-mini sized.
PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(name="tiny", scenes=2, keyframes=3, image_width=400, image_height=225),
    "small": SynthConfig(name="small", scenes=4, keyframes=10, image_width=800, image_height=450),
    "demo": SynthConfig(name="demo", scenes=4, keyframes=10, image_width=800, image_height=450),
    "mini": SynthConfig(name="mini", scenes=10, keyframes=40, image_width=1600, image_height=900),
}


def resolve_config(preset: str | SynthConfig, scenes: int | None = None) -> SynthConfig:
    """The config of a preset name (or a config as is), with ``scenes`` overriding its scene count."""
    if isinstance(preset, SynthConfig):
        cfg = preset
    elif isinstance(preset, str) and preset in PRESETS:
        cfg = PRESETS[preset]
    else:
        raise ConfigError("preset", preset, f"unknown preset; expected one of {', '.join(PRESETS)}")
    return cfg.with_scenes(scenes)
