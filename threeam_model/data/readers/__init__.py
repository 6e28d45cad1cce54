"""Dataset readers: each turns one scene / video on disk into a `VideoSource` of `Frame`s.

The label-PNG functions live in `threeam_model.data.labels_io`; they are re-exported here for old imports.
"""

from threeam_model.data.labels_io import davis_palette, read_annotation, write_annotation
from threeam_model.data.readers.ase import ASEScene
from threeam_model.data.readers.mose import MoseVideo
from threeam_model.data.readers.scannetpp import ScanNetPPScene
from threeam_model.data.readers.synthetic import RenderedScene, SyntheticScene

__all__ = [
    "ASEScene",
    "MoseVideo",
    "RenderedScene",
    "ScanNetPPScene",
    "SyntheticScene",
    "davis_palette",
    "read_annotation",
    "write_annotation",
]
