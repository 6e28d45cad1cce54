"""MUSt3R (multi-view 3D reconstruction with a token memory) in plain PyTorch.

Our own implementation, written from the paper and the official behaviour recorded in ../shared/reference/must3r;
it loads the official checkpoints (strict keys, args parsed without eval) and matches the official outputs.
"""

from .checkpoint import CheckpointError, load_must3r, save_must3r
from .decoder import Must3rDecoder, Must3rMemory
from .encoder import Must3rEncoder
from .keyframes import KeyframeParams
from .model import Must3rModel, build_must3r, tiny_must3r
from .postprocess import postprocess
from .preprocess import preprocess_image
from .stream import Must3rFrame, Must3rStream

__all__ = [
    "CheckpointError",
    "KeyframeParams",
    "Must3rDecoder",
    "Must3rEncoder",
    "Must3rFrame",
    "Must3rMemory",
    "Must3rModel",
    "Must3rStream",
    "build_must3r",
    "load_must3r",
    "postprocess",
    "preprocess_image",
    "save_must3r",
    "tiny_must3r",
]
