"""Training clips: a map-style dataset whose item i is a clip sampled deterministically from (seed, epoch, i).

Each item picks a dataset by its weight, a scene of it uniformly, then frames and objects with the FrameSampler
(continuous or FoV aware, per dataset). The distributed sampler splits item indices across ranks, so ranks see
different clips, and resuming at (epoch, position) replays exactly the same clips.
"""

from __future__ import annotations

import numpy as np
import torch

from threeam_model.data.frames import VideoSource
from threeam_model.data.sampling import FrameSampler


class ClipDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        sources: dict[str, list[VideoSource]],
        sampler: FrameSampler,
        samples_per_epoch: int,
        seed: int = 0,
        weights: dict[str, float] | None = None,
    ):
        self.sources = {k: v for k, v in sources.items() if v}
        if not self.sources:
            raise ValueError("no training scenes: every dataset in the config is empty")
        self.names = sorted(self.sources)
        w = np.array([float((weights or {}).get(k, 1.0)) for k in self.names])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"dataset weights must be >= 0 and not all 0, got {dict(zip(self.names, w))}")
        self.probs = w / w.sum()
        self.sampler = sampler
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        name = self.names[int(rng.choice(len(self.names), p=self.probs))]
        scenes = self.sources[name]
        source = scenes[int(rng.integers(len(scenes)))]
        sample = self.sampler.sample(source, rng)
        frames = [source.frame(t) for t in sample.frame_indices]
        masks = np.stack([np.stack([f.instance == o for o in sample.obj_ids]) for f in frames])
        return {
            "index": int(index),
            "dataset": name,
            "source": source,
            "scene": source.name,
            "frame_indices": list(sample.frame_indices),
            "obj_ids": list(sample.obj_ids),
            "mode": sample.mode,
            "frames": np.stack([f.rgb for f in frames]),  # (T, H, W, 3) uint8
            "masks": masks,  # (T, N, H, W) bool
        }


class ResumableSampler(torch.utils.data.Sampler):
    """Yields a base sampler's indices from position `start` on (exact resume inside an epoch)."""

    def __init__(self, base, start: int = 0):
        self.base = base
        self.start = int(start)

    def __iter__(self):
        return iter(list(self.base)[self.start :])

    def __len__(self) -> int:
        return max(len(self.base) - self.start, 0)
