"""Export SAM 2.1's per-frame path to ONNX: four files with static shapes and a manifest.

`export_sam2(model, folder, object_batch=4, memory_slots=None, pointer_slots=None)` writes
`image_encoder.onnx`, `memory_attention.onnx`, `sam_heads.onnx`, `memory_encoder.onnx` (see modules.py) and
`manifest.json` (the shapes, slots and batch they were made with, and the model's sizes). Memory slots default to
what the default memory policy can read: `max_cond_frames` conditioning frames plus `num_maskmem - 1` recent ones,
and as many pointers plus `max_obj_ptrs_in_encoder - 1`. Needs the optional `onnx` and `onnxscript` packages
(requirements/extras/onnx.txt).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from threeam_model.errors import ExportError
from threeam_model.export.modules import ImageEncoder, MemoryAttention, MemoryEncoder, Merger, SamHeads

FILES = {
    "image_encoder": "image_encoder.onnx",
    "memory_attention": "memory_attention.onnx",
    "sam_heads": "sam_heads.onnx",
    "memory_encoder": "memory_encoder.onnx",
}
MANIFEST = "manifest.json"
MERGER, MERGER_MANIFEST = "merger.onnx", "merger.json"


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the optional packages onnx and onnxscript ({exc.name} is missing): "
            "pip install -r requirements/extras/onnx.txt"
        ) from None


def default_slots(model, max_cond_frames: int = 8) -> tuple[int, int]:
    ptrs = model.max_obj_ptrs_in_encoder if model.use_obj_ptrs_in_encoder else 0
    return max_cond_frames + model.num_maskmem - 1, max_cond_frames + max(ptrs - 1, 0)


def _export(module, args: tuple, path: Path, names_in: list[str], names_out: list[str], opset: int) -> None:
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=names_in,
            output_names=names_out,
            verbose=False,
            optimize=True,
        )
    program.save(str(path))


def export_sam2(
    model,
    folder: str | os.PathLike,
    object_batch: int = 4,
    memory_slots: int | None = None,
    pointer_slots: int | None = None,
    opset: int = 18,
) -> dict:
    """Write the four modules and the manifest; returns the manifest. The model must be in eval mode, float32."""
    require_onnx()
    if object_batch < 1:
        raise ValueError(f"object_batch must be >= 1, got {object_batch}")
    default_mem, default_ptr = default_slots(model)
    memory_slots = default_mem if memory_slots is None else int(memory_slots)
    pointer_slots = default_ptr if pointer_slots is None else int(pointer_slots)
    if memory_slots < 1:
        raise ValueError(f"memory_slots must be >= 1, got {memory_slots}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    S, B = model.image_size, int(object_batch)
    device = model.device
    image = torch.randn(1, 3, S, S, device=device)
    with torch.no_grad():
        fpn0, fpn1, fpn2, *_ = ImageEncoder(model)(image)
    C, Cm = model.hidden_dim, model.mem_dim
    H = W = S // 16
    tokens_per_pointer = C // Cm if Cm < C else 1
    L = memory_slots * H * W + pointer_slots * tokens_per_pointer
    staging = Path(tempfile.mkdtemp(dir=folder))  # write next to the target, then move: no half-written exports
    _export(
        ImageEncoder(model),
        (image,),
        staging / FILES["image_encoder"],
        ["image"],
        ["fpn0", "fpn1", "fpn2", "pos0", "pos1", "pos2"],
        opset,
    )
    curr = torch.randn(H * W, B, C, device=device)
    memory = torch.randn(L, B, Cm, device=device)
    valid = torch.ones(B, memory_slots + pointer_slots, dtype=torch.bool, device=device)
    _export(
        MemoryAttention(model, memory_slots, pointer_slots),
        (curr, curr.clone(), memory, memory.clone(), valid),
        staging / FILES["memory_attention"],
        ["curr", "curr_pos", "memory", "memory_pos", "slot_valid"],
        ["pix_feat"],
        opset,
    )
    pix = torch.randn(B, C, H, W, device=device)
    hr0 = fpn0.expand(B, -1, -1, -1).contiguous()
    hr1 = fpn1.expand(B, -1, -1, -1).contiguous()
    _export(
        SamHeads(model),
        (pix, hr0, hr1),
        staging / FILES["sam_heads"],
        ["pix_feat", "high_res_0", "high_res_1"],
        ["low_res_masks", "high_res_masks", "obj_ptr", "object_score_logits", "multimask_logits", "multimask_ious"],
        opset,
    )
    mask = torch.rand(B, 1, S, S, device=device)
    scores = torch.randn(B, 1, device=device)
    _export(
        MemoryEncoder(model),
        (pix, mask, scores),
        staging / FILES["memory_encoder"],
        ["pix_feat", "mask_for_mem", "object_score_logits"],
        ["maskmem_features"],
        opset,
    )
    manifest = {
        "format": 1,
        "image_size": S,
        "object_batch": B,
        "memory_slots": memory_slots,
        "pointer_slots": pointer_slots,
        "tokens_per_pointer": tokens_per_pointer,
        "hidden_dim": C,
        "mem_dim": Cm,
        "feat_sizes": [list(fpn0.shape[-2:]), list(fpn1.shape[-2:]), [H, W]],
        "files": FILES,
        "opset": opset,
        "torch": torch.__version__,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for name in [*FILES.values(), MANIFEST]:
        os.replace(staging / name, folder / name)
    for leftover in staging.iterdir():  # external-data files the exporter may add
        os.replace(leftover, folder / leftover.name)
    staging.rmdir()
    return manifest


def export_merger(merger, scene, image_size: tuple[int, int], sam_feat: torch.Tensor, folder, opset: int = 18) -> dict:
    """Write 3AM's merger for one camera resolution (`merger.onnx`, `merger.json`): `scene` is a `Must3rFrame` of a
    frame of that size (its token grid and crop box are fixed in the file), `sam_feat` SAM 2's stride-16 feature."""
    require_onnx()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = [i for i in merger.cfg.merge_layers if i in scene.feats]
    module = Merger(merger.eval(), scene.token_grid, image_size, scene.crop_box, layers)
    args = (
        sam_feat,
        scene.enc_tokens[None],
        scene.pts3d[None],
        scene.rays[None],
        *[scene.feats[i][None] for i in layers],
    )
    names = ["sam_feat", "enc_tokens", "pts3d", "rays", *[f"layer_{i}" for i in layers]]
    _export(module, args, folder / MERGER, names, ["merged"], opset)
    manifest = {
        "image_size": list(image_size),
        "token_grid": list(scene.token_grid),
        "crop_box": [float(v) for v in scene.crop_box],
        "layers": layers,
        "sam_feat": list(sam_feat.shape),
    }
    (folder / MERGER_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


__all__ = [
    "FILES",
    "MANIFEST",
    "MERGER",
    "MERGER_MANIFEST",
    "ExportError",
    "default_slots",
    "export_merger",
    "export_sam2",
    "require_onnx",
]
