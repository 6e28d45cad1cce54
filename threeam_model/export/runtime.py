"""The streaming engine's per-frame modules on ONNX Runtime: `OnnxSteps(folder, model, providers)`.

It runs what `export_sam2` wrote: the image encoder, and for tracked frames memory attention, the SAM heads and
the memory encoder, with the shapes fixed at export (an object batch, memory and pointer slots; empty slots are
masked, so any memory up to the slots works and objects with different memory layouts share a batch). Memory
banks, policies, prompts and results stay in Python/PyTorch: prompts run on the PyTorch model (`model`, the same
weights), on the features this backend computed. Providers: "cpu", "cuda", "tensorrt" (ONNX Runtime's CPU, CUDA
and TensorRT execution providers; the optional `onnxruntime` or `onnxruntime-gpu` package).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from threeam_model.errors import ExportError
from threeam_model.export.modules import mask_for_memory
from threeam_model.export.onnx_export import FILES, MANIFEST, MERGER, MERGER_MANIFEST
from threeam_model.streaming.batched import MemoryTokens

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "backend onnxruntime needs the optional package onnxruntime (onnxruntime-gpu for CUDA/TensorRT): "
            "pip install -r requirements/extras/onnx.txt"
        ) from None
    return onnxruntime


class OnnxSteps:
    """ONNX Runtime in place of `streaming.backend.TorchSteps` (see the module docstring)."""

    name = "onnxruntime"

    def __init__(self, folder, model, providers: tuple[str, ...] = ("cpu",), threads: int | None = None):
        ort = _onnxruntime()
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise ExportError(f"no {MANIFEST} in {folder}: export the model first (threeam-export)")
        self.manifest = json.loads(path.read_text())
        if self.manifest["image_size"] != model.image_size or self.manifest["hidden_dim"] != model.hidden_dim:
            raise ExportError(
                f"{folder} was exported for image size {self.manifest['image_size']} / width "
                f"{self.manifest['hidden_dim']}, the model has {model.image_size} / {model.hidden_dim}"
            )
        unknown = [p for p in providers if p not in PROVIDERS]
        if unknown:
            raise ExportError(f"unknown providers {unknown}; use {sorted(PROVIDERS)}")
        wanted = [PROVIDERS[p] for p in providers]
        missing = [p for p in wanted if p not in ort.get_available_providers()]
        if missing:
            raise ExportError(f"ONNX Runtime here has no {missing} (available: {ort.get_available_providers()})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.sessions = {
            key: ort.InferenceSession(str(folder / name), options, providers=wanted) for key, name in FILES.items()
        }
        self.model = model
        self.batch = self.manifest["object_batch"]
        self.memory_slots = self.manifest["memory_slots"]
        self.pointer_slots = self.manifest["pointer_slots"]
        self.tokens_per_pointer = self.manifest["tokens_per_pointer"]
        H, W = self.manifest["feat_sizes"][-1]
        self.hw = H * W
        with torch.no_grad():
            probe = torch.zeros(1, self.manifest["mem_dim"], H, W, device=model.device)
            self._maskmem_pos = [model.memory_encoder.position_encoding(probe).to(probe.dtype)]

    def _run(self, key: str, **inputs) -> list[np.ndarray]:
        feed = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return self.sessions[key].run(None, feed)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.model.device)

    def forward_image(self, image: torch.Tensor) -> dict:
        fpn0, fpn1, fpn2, pos0, pos1, pos2 = (self._tensor(x) for x in self._run("image_encoder", image=image.float()))
        return {"backbone_fpn": [fpn0, fpn1, fpn2], "vision_pos_enc": [pos0, pos1, pos2]}

    def group_key(self, tokens: MemoryTokens):
        return None  # static slots: every object fits one layout

    def _slots(self, tok: MemoryTokens) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """One object's memory in the static layout: memory, pos (L, Cm), slot validity (slots,)."""
        n_ptr_tokens = tok.num_obj_ptr_tokens
        spatial = tok.memory.shape[0] - n_ptr_tokens
        n_mem, n_ptr = spatial // self.hw, n_ptr_tokens // self.tokens_per_pointer
        if n_mem > self.memory_slots or n_ptr > self.pointer_slots:
            raise ExportError(
                f"an object reads {n_mem} memories and {n_ptr} pointers, the export has {self.memory_slots} and "
                f"{self.pointer_slots} slots: export with more (threeam-export --memory-slots/--pointer-slots) or "
                "keep fewer conditioning frames"
            )
        L = self.memory_slots * self.hw + self.pointer_slots * self.tokens_per_pointer
        base = self.memory_slots * self.hw
        memory = tok.memory.new_zeros(L, tok.memory.shape[-1])
        pos = tok.pos.new_zeros(L, tok.pos.shape[-1])
        memory[:spatial], pos[:spatial] = tok.memory[:spatial, 0], tok.pos[:spatial, 0]
        memory[base : base + n_ptr_tokens], pos[base : base + n_ptr_tokens] = (
            tok.memory[spatial:, 0],
            tok.pos[spatial:, 0],
        )
        valid = np.zeros(self.memory_slots + self.pointer_slots, bool)
        valid[:n_mem] = True
        valid[self.memory_slots : self.memory_slots + n_ptr] = True
        return memory, pos, valid

    def step(self, features, tokens: list[MemoryTokens], pad_to: int | None = None) -> dict:
        vision_feats, vision_pos_embeds, feat_sizes = features
        (h0, w0), (h1, w1), (H, W) = feat_sizes
        C = self.model.hidden_dim
        B = self.batch
        curr = vision_feats[-1].float().expand(-1, B, -1).contiguous()
        curr_pos = vision_pos_embeds[-1].float().expand(-1, B, -1).contiguous()
        hr0 = vision_feats[0].permute(1, 2, 0).reshape(1, -1, h0, w0).float().expand(B, -1, -1, -1).contiguous()
        hr1 = vision_feats[1].permute(1, 2, 0).reshape(1, -1, h1, w1).float().expand(B, -1, -1, -1).contiguous()
        own = vision_feats[-1].permute(1, 2, 0).reshape(1, C, H, W).float().expand(B, -1, -1, -1).contiguous()
        parts = {
            k: []
            for k in (
                "pred_masks",
                "obj_ptr",
                "object_score_logits",
                "maskmem_features",
                "multimask_logits",
                "multimask_ious",
            )
        }
        for start in range(0, len(tokens), B):
            chunk = tokens[start : start + B]
            slots = [self._slots(t) for t in chunk] + [self._slots(chunk[-1])] * (B - len(chunk))
            memory = torch.stack([s[0] for s in slots], dim=1)
            pos = torch.stack([s[1] for s in slots], dim=1)
            valid = np.stack([s[2] for s in slots])
            (pix,) = self._run(
                "memory_attention",
                curr=curr,
                curr_pos=curr_pos,
                memory=memory.float(),
                memory_pos=pos.float(),
                slot_valid=valid,
            )
            pix = self._tensor(pix).permute(1, 2, 0).reshape(B, C, H, W)
            low, high, ptr, score, multi, ious = (
                self._tensor(x) for x in self._run("sam_heads", pix_feat=pix, high_res_0=hr0, high_res_1=hr1)
            )
            mask = mask_for_memory(self.model, high, is_mask_from_pts=False)
            (maskmem,) = self._run("memory_encoder", pix_feat=own, mask_for_mem=mask, object_score_logits=score)
            n = len(chunk)
            for key, value in (
                ("pred_masks", low),
                ("obj_ptr", ptr),
                ("object_score_logits", score),
                ("maskmem_features", self._tensor(maskmem)),
                ("multimask_logits", multi),
                ("multimask_ious", ious),
            ):
                parts[key].append(value[:n])
        out = {k: torch.cat(v) for k, v in parts.items()}
        out["maskmem_pos_enc"] = self._maskmem_pos
        return out

    def encode_memory(self, features, high_res_masks, object_score_logits, is_mask_from_pts: bool):
        vision_feats, _, feat_sizes = features
        H, W = feat_sizes[-1]
        C, B = self.model.hidden_dim, self.batch
        n = high_res_masks.shape[0]
        own = vision_feats[-1].permute(1, 2, 0).reshape(-1, C, H, W).float()
        own = own.expand(B, -1, -1, -1).contiguous() if own.shape[0] == 1 else own
        mask = mask_for_memory(self.model, high_res_masks.float(), is_mask_from_pts)
        pad = B - n
        mask = torch.cat([mask, mask[-1:].expand(pad, -1, -1, -1)]) if pad > 0 else mask
        scores = object_score_logits.float()
        scores = torch.cat([scores, scores[-1:].expand(pad, -1)]) if pad > 0 else scores
        (maskmem,) = self._run("memory_encoder", pix_feat=own, mask_for_mem=mask, object_score_logits=scores)
        return self._tensor(maskmem)[:n], self._maskmem_pos


class OnnxMerger:
    """3AM's merger on ONNX Runtime, in place of the FeatureMerger in `MergedFeatures(merge=...)`: same call as the
    module (as `merge_features` makes it); frames of another size or crop than the export are refused."""

    def __init__(self, folder, merger, providers: tuple[str, ...] = ("cpu",), threads: int | None = None):
        ort = _onnxruntime()
        folder = Path(folder)
        if not (folder / MERGER_MANIFEST).is_file():
            raise ExportError(f"no {MERGER_MANIFEST} in {folder}: export the merger (threeam-export --merger-for WxH)")
        self.manifest = json.loads((folder / MERGER_MANIFEST).read_text())
        self.cfg = merger.cfg  # merge_features reads which layers to pass
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(folder / MERGER), options, providers=[PROVIDERS[p] for p in providers])

    def __call__(self, sam_feat, enc_tokens, layer_feats, pts3d, rays, token_grid, image_size, crop_box):
        m = self.manifest
        got = (list(token_grid), list(image_size), [float(v) for v in crop_box])
        if got != (m["token_grid"], m["image_size"], m["crop_box"]):
            raise ExportError(
                f"the merger was exported for {m['image_size'][1]}x{m['image_size'][0]} frames (MUSt3R grid "
                f"{m['token_grid']}, crop {m['crop_box']}); this frame is {image_size[1]}x{image_size[0]} "
                f"(grid {list(token_grid)}, crop {list(crop_box)}): export again with --merger-for"
            )
        feed = {"sam_feat": sam_feat, "enc_tokens": enc_tokens, "pts3d": pts3d, "rays": rays}
        feed.update({f"layer_{i}": layer_feats[i] for i in m["layers"]})
        feed = {k: v.detach().float().cpu().numpy() for k, v in feed.items()}
        (merged,) = self.session.run(None, feed)
        return torch.from_numpy(merged).to(sam_feat.device, sam_feat.dtype)


__all__ = ["PROVIDERS", "OnnxMerger", "OnnxSteps"]
