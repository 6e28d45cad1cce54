"""The streaming engine: SAM 2 (or 3AM) frame by frame, many objects, bounded memory per object.

engine.py: `StreamingSAM2`, the stateful layer (frames, prompts, objects); memory.py: `ObjectMemory` and the
`MemoryPolicy` seam (`Sam2Window`, the official rule); features.py: the `FeatureProvider` seam (`SamFeatures`,
3AM's `MergedFeatures`); batched.py: one step for many objects; results.py: masks, boxes and the label image.
"""

from threeam_model.streaming.engine import StreamingSAM2
from threeam_model.streaming.features import FeatureOutput, FeatureProvider, MergedFeatures, SamFeatures, merge_features
from threeam_model.streaming.memory import MemoryPolicy, ObjectMemory, Sam2Window

__all__ = [
    "FeatureOutput",
    "FeatureProvider",
    "MemoryPolicy",
    "MergedFeatures",
    "ObjectMemory",
    "Sam2Window",
    "SamFeatures",
    "StreamingSAM2",
    "merge_features",
]
