"""Synthetic nuScenes-format dataset: a simulated HDL-32E LiDAR and six cameras in a procedural street
scene, written with the 13 nuScenes tables so that nuscenes-devkit loads it like the real thing.

Public API: :func:`generate`, :class:`SynthConfig`, :data:`PRESETS`.
"""
from shared.synth.config import PRESETS, SynthConfig
from shared.synth.generate import generate

__all__ = ["PRESETS", "SynthConfig", "generate"]
