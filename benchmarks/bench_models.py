"""What several benchmark scripts share: SAM 2 models by short name and side-by-side box prompts."""

from __future__ import annotations

from threeam_model.sam2_build import build_sam2


def sam2_by_name(name: str, device: str = "cpu"):
    """ "tiny" (random tiny SAM 2.1, seed 4) or "t512" / "t1024" (SAM 2.1-t at that input size, random weights)."""
    if name == "tiny":
        model = build_sam2(tiny=True, seed=4, device=device)
    else:
        model = build_sam2("t", image_size=int(name[1:]), device=device)
    return model.eval()


def prompt_side_by_side(tracker, objects: int, width: int = 640, top: int = 120, bottom: int = 360) -> None:
    """Objects 1..n from boxes side by side across the frame, 4 pixels apart from the strip edges."""
    for k in range(objects):
        x0 = width * k // objects
        tracker.add_prompt(k + 1, box=[x0 + 4, top, x0 + width // objects - 4, bottom])
