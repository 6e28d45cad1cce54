"""ONNX export of the per-frame path and the ONNX Runtime backend: each exported module equals its PyTorch module on
random inputs; the engine on ONNX Runtime tracks like the engine on PyTorch; clear refusals."""

import sys

import numpy as np
import pytest
import torch

from threeam_model.export.modules import ImageEncoder, MemoryAttention, MemoryEncoder, SamHeads
from threeam_model.export.onnx_export import ExportError, export_sam2
from threeam_model.export.runtime import OnnxSteps
from threeam_model.factory import TrackerConfig, build_tracker
from threeam_model.sam2_build import build_sam2
from threeam_model.streaming import StreamingSAM2
from threeam_model.streaming.batched import memory_tokens


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    model = build_sam2(tiny=True, seed=4).eval()
    folder = tmp_path_factory.mktemp("onnx_tiny")
    export_sam2(model, folder, object_batch=2)
    return model, folder


def _module_inputs(model, manifest, seed=0):
    g = torch.Generator().manual_seed(seed)
    S, B = model.image_size, manifest["object_batch"]
    C, Cm = model.hidden_dim, model.mem_dim
    (h0, w0), (h1, w1), (H, W) = manifest["feat_sizes"]
    L = manifest["memory_slots"] * H * W + manifest["pointer_slots"] * manifest["tokens_per_pointer"]
    valid = torch.zeros(B, manifest["memory_slots"] + manifest["pointer_slots"], dtype=torch.bool)
    valid[0, :3], valid[0, manifest["memory_slots"] : manifest["memory_slots"] + 5] = True, True
    valid[1:, :1], valid[1:, manifest["memory_slots"]] = True, True  # other objects: one memory, one pointer
    hr_channels = (model.sam_mask_decoder.conv_s0.out_channels, model.sam_mask_decoder.conv_s1.out_channels)
    return {
        "image_encoder": dict(image=torch.randn(1, 3, S, S, generator=g)),
        "memory_attention": dict(
            curr=torch.randn(H * W, B, C, generator=g),
            curr_pos=torch.randn(H * W, B, C, generator=g),
            memory=torch.randn(L, B, Cm, generator=g),
            memory_pos=torch.randn(L, B, Cm, generator=g),
            slot_valid=valid,
        ),
        "sam_heads": dict(
            pix_feat=torch.randn(B, C, H, W, generator=g),
            high_res_0=torch.randn(B, hr_channels[0], h0, w0, generator=g),
            high_res_1=torch.randn(B, hr_channels[1], h1, w1, generator=g),
        ),
        "memory_encoder": dict(
            pix_feat=torch.randn(B, C, H, W, generator=g),
            mask_for_mem=torch.rand(B, 1, S, S, generator=g),
            object_score_logits=torch.randn(B, 1, generator=g),
        ),
    }


def _check_modules(model, folder):
    steps = OnnxSteps(folder, model)
    manifest = steps.manifest
    modules = {
        "image_encoder": ImageEncoder(model),
        "memory_attention": MemoryAttention(model, manifest["memory_slots"], manifest["pointer_slots"]),
        "sam_heads": SamHeads(model),
        "memory_encoder": MemoryEncoder(model),
    }
    for name, inputs in _module_inputs(model, manifest).items():
        with torch.no_grad():
            ref = modules[name](**inputs)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = steps._run(name, **inputs)
        assert len(got) == len(ref), name
        for i, (a, b) in enumerate(zip(got, ref, strict=True)):
            b = b.numpy()
            assert a.shape == b.shape, (name, i)
            assert float(np.abs(a.astype(np.float64) - b).max()) <= 1e-4 * max(1.0, float(np.abs(b).max())), (name, i)


def test_every_exported_module_equals_pytorch(tiny_export):
    _check_modules(*tiny_export)


@pytest.mark.slow
def test_sam2_1_tiny_at_512_exports_equal_to_pytorch(tmp_path):
    model = build_sam2("t", image_size=512).eval()  # the released architecture, random weights
    export_sam2(model, tmp_path, object_batch=2, memory_slots=3, pointer_slots=4)
    _check_modules(model, tmp_path)


def test_masked_memory_attention_equals_sam2_on_a_real_memory(tiny_export):
    """The static-slot memory attention with empty slots masked equals SAM 2's on the unpadded memory."""
    model, _ = tiny_export
    tracker = StreamingSAM2(model)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 48, 64, 3), dtype=np.uint8)
    tracker.track(frames[0])
    tracker.add_prompt(1, box=[5, 5, 40, 40])
    for f in frames[1:]:
        tracker.track(f)
    with torch.inference_mode():
        vf, vp, _ = tracker._features
        view = tracker.memory_policy.view(tracker.memory_bank(1), tracker.frame_index)
        tok = memory_tokens(model, tracker.frame_index, view, 10**9)
        ref = model.memory_attention(
            curr=[vf[-1]],
            curr_pos=[vp[-1]],
            memory=tok.memory,
            memory_pos=tok.pos,
            num_obj_ptr_tokens=tok.num_obj_ptr_tokens,
        )
        steps = OnnxSteps(tiny_export[1], model)
        memory, pos, valid = steps._slots(tok)
        assert not valid.all()  # empty slots are part of the check
        ma = MemoryAttention(model, steps.memory_slots, steps.pointer_slots)
        got = ma(vf[-1], vp[-1], memory[:, None], pos[:, None], torch.from_numpy(valid)[None])
    assert float((got - ref).abs().max()) <= 1e-5


def moving_frames(n=30, h=48, w=64):
    rng = np.random.default_rng(0)
    background = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        f = background.copy()
        f[(yy - 20) ** 2 + (xx - 10 - i) ** 2 < 64] = (220, 70, 60)
        f[(yy >= 30) & (xx >= 40 - i // 2) & (xx < 55 - i // 2)] = (50, 190, 100)
        yield f


def test_onnxruntime_tracker_equals_pytorch_tracker(tiny_export):
    """30 frames, objects added on frames 0, 5 and 18 (3 objects: more than the exported batch of 2), a refinement
    click on frame 12; memory slots start empty. Masks identical, logits within 1e-3."""
    model, folder = tiny_export
    runs = {}
    for name, steps in (("torch", None), ("onnxruntime", OnnxSteps(folder, model))):
        tracker = StreamingSAM2(model, steps=steps)
        out = []
        for i, frame in enumerate(moving_frames()):
            result = tracker.track(frame)
            out.append({k: o.mask_logits for k, o in result.objects.items()})
            if i == 0:
                tracker.add_prompt(1, points=[[10, 20]])
            if i == 5:
                tracker.add_prompt(2, box=[25, 30, 55, 47])
            if i == 12:
                tracker.add_prompt(1, points=[[30, 20]])
            if i == 18:
                tracker.add_prompt(3, points=[[50, 10]])
        runs[name] = out
    worst = 0.0
    for a, b in zip(runs["torch"], runs["onnxruntime"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k] > 0, b[k] > 0)
            worst = max(worst, float(np.abs(a[k] - b[k]).max()))
    assert worst <= 1e-3
    assert len(runs["torch"][-1]) == 3 and any((v > 0).any() for v in runs["torch"][-1].values())


def test_the_factory_builds_the_onnxruntime_backend_and_refuses_what_it_cannot_run(tiny_export, tmp_path):
    _, folder = tiny_export
    tracker = build_tracker(
        TrackerConfig(tiny=True, seed=4, method="sam2", backend="onnxruntime", onnx_dir=str(folder))
    )
    assert isinstance(tracker.steps, OnnxSteps)
    tracker.track(next(moving_frames(1)))
    with pytest.raises(ValueError, match="onnx_dir"):
        TrackerConfig(tiny=True, backend="onnxruntime")
    with pytest.raises(ExportError, match="export the model first"):
        build_tracker(TrackerConfig(tiny=True, method="sam2", backend="onnxruntime", onnx_dir=str(tmp_path)))
    with pytest.raises(ExportError, match="image size"):
        OnnxSteps(folder, build_sam2(tiny=True, image_size=128))
    with pytest.raises(ExportError, match="unknown providers"):
        OnnxSteps(folder, tiny_export[0], providers=("npu",))


def test_too_few_slots_and_a_missing_runtime_are_explained(tmp_path, monkeypatch):
    model = build_sam2(tiny=True, seed=4).eval()
    export_sam2(model, tmp_path, object_batch=1, memory_slots=2, pointer_slots=2)
    tracker = StreamingSAM2(model, steps=OnnxSteps(tmp_path, model))
    frames = moving_frames(6)
    tracker.track(next(frames))
    tracker.add_prompt(1, points=[[10, 20]])
    for _ in range(2):
        tracker.track(next(frames))
    with pytest.raises(ExportError, match="--memory-slots"):
        for f in frames:
            tracker.track(f)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match="requirements/extras/onnx.txt"):
        OnnxSteps(tmp_path, model)


def test_threeam_export_cli(tmp_path, capsys):
    from threeam_model.cli.export import main

    assert main(["-o", str(tmp_path / "tiny"), "--tiny", "--object-batch", "1"]) == 0
    assert (tmp_path / "tiny" / "manifest.json").is_file() and "object batch 1" in capsys.readouterr().out
    assert main(["-o", str(tmp_path / "x"), "--variant", "tiny", "--sam2-checkpoint", str(tmp_path / "no.pt")]) == 2
    # with the merger: the factory then runs 3AM's merger on ONNX Runtime too
    assert main(["-o", str(tmp_path / "3am"), "--tiny", "--merger-for", "64x48", "--object-batch", "1"]) == 0
    from threeam_model.export.runtime import OnnxMerger

    cfg = TrackerConfig(tiny=True, method="3am", backend="onnxruntime", onnx_dir=str(tmp_path / "3am"))
    tracker = build_tracker(cfg)
    assert isinstance(tracker.features._merge, OnnxMerger)
    assert tracker.track(next(moving_frames(1))).scene is not None
    assert main(["-o", str(tmp_path / "y"), "--tiny", "--merger-for", "64by48"]) == 2


def test_3am_runs_on_the_onnxruntime_backend_with_its_merger_in_pytorch(tiny_export):
    """method 3am + backend onnxruntime: SAM 2's modules on ONNX Runtime, MUSt3R and the merger in PyTorch; the same
    masks as the PyTorch 3AM tracker (the untrained merger passes SAM 2's feature through)."""
    _, folder = tiny_export
    cfg = dict(tiny=True, seed=4, method="3am")
    runs = {}
    for backend in ("torch", "onnxruntime"):
        extra = {"backend": backend, "onnx_dir": str(folder)} if backend == "onnxruntime" else {}
        tracker = build_tracker(TrackerConfig(**cfg, **extra))
        out = []
        for i, frame in enumerate(moving_frames(8)):
            result = tracker.track(frame)
            assert result.scene is not None  # MUSt3R ran
            out.append({k: o.mask_logits for k, o in result.objects.items()})
            if i == 0:
                tracker.add_prompt(1, box=[5, 10, 30, 35])
        runs[backend] = out
    for a, b in zip(runs["torch"], runs["onnxruntime"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k] > 0, b[k] > 0) and float(np.abs(a[k] - b[k]).max()) <= 1e-3


def test_the_3am_merger_exports_for_one_camera_size_and_tracks_like_pytorch(tmp_path):
    """A merger with non-trivial weights: the ONNX merger equals the module on a real MUSt3R frame, 3AM with SAM 2
    and the merger on ONNX Runtime tracks like 3AM on PyTorch, and a frame of another size is refused."""
    from threeam_model.export.onnx_export import export_merger
    from threeam_model.export.runtime import OnnxMerger
    from threeam_model.factory import build_must3r_model, must3r_stream
    from threeam_model.streaming import MergedFeatures, merge_features

    cfg = TrackerConfig(tiny=True, seed=4, method="3am")
    reference = build_tracker(cfg)
    merger = reference.features.merger
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in merger.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    frames = list(moving_frames(8))
    with torch.inference_mode():
        scene = reference.track(frames[0]).scene
        sam_feat = torch.randn(1, merger.cfg.sam_dim, 4, 4, generator=g)
        expected = merge_features(merger, sam_feat, scene, (48, 64))
    export_sam2(reference.model, tmp_path, object_batch=1)
    export_merger(merger, scene, (48, 64), sam_feat, tmp_path)
    onnx_merger = OnnxMerger(tmp_path, merger)
    assert float((merge_features(onnx_merger, sam_feat, scene, (48, 64)) - expected).abs().max()) <= 1e-4
    onnx = StreamingSAM2(
        reference.model,
        features=MergedFeatures(
            must3r_stream(build_must3r_model(cfg), cfg, feat_layers=(0, 4, 7, 11)), merger, merge=onnx_merger
        ),
        steps=OnnxSteps(tmp_path, reference.model),
    )
    reference.reset()
    for i, frame in enumerate(frames):
        a, b = reference.track(frame), onnx.track(frame)
        if i == 0:
            a.objects[1] = reference.add_prompt(1, box=[5, 10, 30, 35])
            b.objects[1] = onnx.add_prompt(1, box=[5, 10, 30, 35])
        for k in a.objects:
            x, y = a.objects[k].mask_logits, b.objects[k].mask_logits
            assert np.array_equal(x > 0, y > 0) and float(np.abs(x - y).max()) <= 1e-3
    with pytest.raises(ExportError, match="export again with --merger-for"):
        onnx.reset()
        onnx.track(np.zeros((40, 64, 3), np.uint8))
