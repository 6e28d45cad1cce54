"""Where the engine's per-frame modules run: `TorchSteps` (the SAM 2 model in PyTorch, optionally compiled), or
an ONNX Runtime session set with the same three calls (`threeam_model.export.runtime.OnnxSteps`). The engine,
its memory policies and its results do not change with the backend."""

from __future__ import annotations

import torch

from threeam_model.streaming.batched import MemoryTokens, step_objects


class TorchSteps:
    """The per-frame modules of a SAM2Base in PyTorch. compile: torch.compile the image encoder with static shapes
    (on CUDA with CUDA-graph capture: its outputs are copied out of the graph's buffers)."""

    name = "torch"

    def __init__(self, model, compile: bool = False):
        self.model = model
        self.compile = bool(compile)
        self.cuda_graphs = self.compile and model.device.type == "cuda"
        self._image_encoder = model.image_encoder
        if self.compile:
            mode = "reduce-overhead" if self.cuda_graphs else None
            self._image_encoder = torch.compile(model.image_encoder, dynamic=False, mode=mode)

    @property
    def compile_mode(self) -> str | None:
        return "reduce-overhead" if self.cuda_graphs else None

    def forward_image(self, image: torch.Tensor) -> dict:
        """`SAM2Base.forward_image`."""
        out = self._image_encoder(image)
        if self.cuda_graphs:  # replayed graphs overwrite their outputs on the next frame
            out = {k: [x.clone() for x in v] if isinstance(v, list) else v.clone() for k, v in out.items()}
        model = self.model
        if model.use_high_res_features_in_sam:
            # precomputed once per frame for every click, as SAM2Base.forward_image does
            out["backbone_fpn"][0] = model.sam_mask_decoder.conv_s0(out["backbone_fpn"][0])
            out["backbone_fpn"][1] = model.sam_mask_decoder.conv_s1(out["backbone_fpn"][1])
        return out

    def step(self, features, tokens: list[MemoryTokens], pad_to: int | None = None) -> dict:
        """One batched tracking step of objects with one memory layout (`batched.step_objects`)."""
        return step_objects(self.model, features, tokens, pad_to)

    def encode_memory(self, features, high_res_masks, object_score_logits, is_mask_from_pts: bool):
        vision_feats, _, feat_sizes = features
        return self.model._encode_new_memory(
            current_vision_feats=vision_feats,
            feat_sizes=feat_sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits,
            is_mask_from_pts=is_mask_from_pts,
        )

    def group_key(self, tokens: MemoryTokens):
        """Objects with equal keys share a batch: here, the same memory layout."""
        return tokens.layout


__all__ = ["TorchSteps"]
