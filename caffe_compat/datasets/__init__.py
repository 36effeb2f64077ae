"""Data sets the project generates itself (no download): :mod:`.scenes`."""
from __future__ import annotations

from .scenes import CLASS_NAMES, SceneConfig, SceneSet, render_scene, scene, write_scenes

__all__ = ["CLASS_NAMES", "SceneConfig", "SceneSet", "render_scene", "scene", "write_scenes"]
