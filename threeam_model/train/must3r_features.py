"""MUSt3R outputs for a training clip: run on the fly (continuous clips) or read from a per-scene cache (FoV clips).

Paper sec. 4: MUSt3R is run once over every scene and its features are stored; FoV-sampled clips use the stored
features (MUSt3R saw the whole scene, in order), continuous clips run MUSt3R on the fly over the clip's frames.

Cache layout: ``<cache_dir>/<dataset>/<scene name>/<frame index:06d>.pt`` (one Must3rFrame per file, written
atomically; tensors in `cache_dtype`) and ``.../complete`` once a scene is done. A scene is computed the first
time one of its frames is asked for, or ahead of time with `precompute`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable

import numpy as np
import torch

from threeam_model.data.frames import VideoSource
from threeam_model.must3r.stream import Must3rFrame, Must3rStream


def _to(x, dtype):
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype) if x.is_floating_point() else x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to(v, dtype) for k, v in x.items()}
    return x


def save_frame(frame: Must3rFrame, path: pathlib.Path, dtype=torch.float16) -> None:
    payload = {f.name: _to(getattr(frame, f.name), dtype) for f in dataclasses.fields(frame)}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_frame(path: pathlib.Path, device) -> Must3rFrame:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload = {k: _to(v, torch.float32) for k, v in payload.items()}
    for key in ("token_grid", "true_shape", "crop_box"):
        payload[key] = tuple(payload[key])
    frame = Must3rFrame(**payload)
    for f in dataclasses.fields(frame):
        v = getattr(frame, f.name)
        if isinstance(v, torch.Tensor):
            setattr(frame, f.name, v.to(device))
        elif isinstance(v, dict):
            setattr(frame, f.name, {k: t.to(device) for k, t in v.items()})
    return frame


class Must3rFeatures:
    """stream_factory: builds a fresh Must3rStream (its own bounded memory) for each clip or scene."""

    def __init__(self, stream_factory: Callable[[], Must3rStream], cache_dir=None, cache_dtype=torch.float16):
        self.stream_factory = stream_factory
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else None
        self.cache_dtype = cache_dtype
        self._stream: Must3rStream | None = None

    def _fresh_stream(self) -> Must3rStream:
        if self._stream is None:
            self._stream = self.stream_factory()
        self._stream.reset()
        return self._stream

    @torch.no_grad()
    def on_the_fly(self, frames: np.ndarray) -> list[Must3rFrame]:
        stream = self._fresh_stream()
        return [stream.step(np.ascontiguousarray(f)) for f in frames]

    def scene_dir(self, source: VideoSource) -> pathlib.Path:
        if self.cache_dir is None:
            raise ValueError("FoV clips need a MUSt3R cache directory (must3r.cache_dir in the config)")
        return self.cache_dir / source.dataset / source.name

    @torch.no_grad()
    def precompute(self, source: VideoSource) -> pathlib.Path:
        """Run MUSt3R over the whole scene in frame order and store every frame's outputs (idempotent)."""
        d = self.scene_dir(source)
        if (d / "complete").is_file():
            return d
        d.mkdir(parents=True, exist_ok=True)
        stream = self._fresh_stream()
        for t in range(len(source)):
            save_frame(stream.step(source.frame(t).rgb), d / f"{t:06d}.pt", self.cache_dtype)
        (d / "complete").write_text(f"{len(source)} frames\n")
        return d

    def cached(self, source: VideoSource, indices: list[int]) -> list[Must3rFrame]:
        d = self.precompute(source)
        device = self.stream_factory_device()
        return [load_frame(d / f"{t:06d}.pt", device) for t in indices]

    def stream_factory_device(self) -> torch.device:
        if self._stream is None:
            self._stream = self.stream_factory()
        return self._stream.device
