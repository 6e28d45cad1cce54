"""Geometric re-identification: per-object 3D anchors that re-find lost objects and veto look-alikes."""

from threeam_model.reid.anchor import ObjectAnchor
from threeam_model.reid.decision import AnchorState, Decision, Evidence, decide
from threeam_model.reid.geometry import (
    FrameGeometry,
    GeometryInputError,
    GeometrySource,
    Must3rGeometry,
    RGBDGeometry,
    check_camera,
    pointmap_geometry,
)
from threeam_model.reid.reid import AnchorView, GeometricReID, ReIDConfig, ReIDEvent

__all__ = [
    "AnchorState",
    "AnchorView",
    "Decision",
    "Evidence",
    "FrameGeometry",
    "GeometricReID",
    "GeometryInputError",
    "GeometrySource",
    "Must3rGeometry",
    "ObjectAnchor",
    "RGBDGeometry",
    "ReIDConfig",
    "ReIDEvent",
    "check_camera",
    "decide",
    "pointmap_geometry",
]
