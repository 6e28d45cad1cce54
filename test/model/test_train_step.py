"""Training pieces on tiny models: config, clip dataset, MUSt3R cache, and one 3AM training step's gradients."""

import numpy as np
import pytest
import torch

from threeam_model.train.config import load_config, parse_override
from threeam_model.train.losses import video_losses
from threeam_model.train.model_step import mask_targets, sam2_input
from threeam_model.train.must3r_features import load_frame, save_frame
from threeam_model.train.prompting import PromptPlan
from threeam_model.train.trainer import Trainer

TINY = "training/configs/tiny_synthetic.yaml"


def tiny_config(tmp_path, *overrides):
    return load_config(
        TINY,
        [
            f"train.out_dir={tmp_path / 'run'}",
            "train.progress=false",
            "data.datasets=[{type: synthetic, num_scenes: 2, num_frames: 12, width: 48, height: 36, num_objects: 2}]",
            *overrides,
        ],
    )


def test_config_defaults_overrides_and_typos():
    cfg = load_config()
    assert cfg["optim"]["lr"] == {"merger": 1e-5, "memory_attention": 5e-6, "mask_decoder": 5e-6}  # paper
    assert cfg["sampling"]["num_frames"] == 8 and cfg["sampling"]["tau"] == 0.25
    assert cfg["sampling"]["fov_prob"]["scannetpp"] == 0.8 and cfg["sampling"]["fov_prob"]["mose"] == 0.0
    assert cfg["loss"] == {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}
    assert cfg["train"]["iterations"] == 1_000_000
    assert parse_override("optim.lr.merger=1e-3") == {"optim": {"lr": {"merger": 1e-3}}}
    cfg = load_config(None, ["sampling.fov_prob={mose: 0.5}"])
    assert cfg["sampling"]["fov_prob"]["mose"] == 0.5 and cfg["sampling"]["fov_prob"]["ase"] == 0.8
    with pytest.raises(KeyError, match="optim.lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_override("nonsense")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return Trainer(tiny_config(tmp_path_factory.mktemp("step")))


def test_clips_are_deterministic_and_differ(trainer):
    ds = trainer.dataset
    a, b, c = ds[3], ds[3], ds[4]
    assert a["frame_indices"] == b["frame_indices"] and a["obj_ids"] == b["obj_ids"]
    np.testing.assert_array_equal(a["frames"], b["frames"])
    assert (a["scene"], a["frame_indices"]) != (c["scene"], c["frame_indices"])
    assert a["masks"].shape == (len(a["frame_indices"]), len(a["obj_ids"]), 36, 48)
    assert a["masks"][0].reshape(len(a["obj_ids"]), -1).any(1).all()  # every object visible on the prompted frame
    ds.set_epoch(1)
    assert (
        ds[3]["frame_indices"] != a["frame_indices"] or ds[3]["scene"] != a["scene"] or ds[3]["obj_ids"] != a["obj_ids"]
    )
    ds.set_epoch(0)


def test_must3r_cache_round_trip(trainer, tmp_path):
    source = trainer.dataset.sources["synthetic"][0]
    live = trainer.features.on_the_fly(np.stack([source.frame(t).rgb for t in range(len(source))]))
    cached = trainer.features.cached(source, [0, 5, 11])
    for t, frame in zip([0, 5, 11], cached):
        ref = live[t]
        assert frame.token_grid == ref.token_grid and frame.crop_box == ref.crop_box
        torch.testing.assert_close(frame.enc_tokens, ref.enc_tokens, rtol=2e-3, atol=2e-3)  # float16 storage
        for k in ref.feats:
            torch.testing.assert_close(frame.feats[k], ref.feats[k], rtol=2e-3, atol=2e-3)
    save_frame(live[1], tmp_path / "f.pt", dtype=torch.float32)
    exact = load_frame(tmp_path / "f.pt", "cpu")
    assert torch.equal(exact.pts3d, live[1].pts3d) and exact.is_keyframe == live[1].is_keyframe


def test_one_step_trains_only_the_papers_parts(trainer):
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("merger.", "sam2.memory_attention.", "sam2.sam_mask_decoder.")) for n in trainable
    )
    assert any(n.startswith("merger.") for n in trainable)
    assert not any(p.requires_grad for p in trainer.must3r.parameters())
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"merger": 2e-3, "memory_attention": 1e-3, "mask_decoder": 1e-3}  # the tiny config's

    item = trainer.dataset[0]
    size = model.image_size
    images, targets = sam2_input(item["frames"], size), mask_targets(item["masks"], size)
    plan = PromptPlan(use_points=True, init_cond_frames=[0], frames_to_correct=[0, 1], box_frames=[])
    rng = np.random.default_rng(0)
    feats = trainer.features.on_the_fly(item["frames"])
    outputs = model(images, targets, plan, feats, item["frames"].shape[1:3], rng)
    n_steps = [len(o["multistep_pred_ious"]) for o in outputs]
    clicks = model.schedule.num_correction_points
    assert n_steps[:2] == [1 + clicks, 1 + clicks] and set(n_steps[2:]) == {1}  # correction clicks on frames 0, 1
    losses = video_losses(outputs, targets.float())
    assert torch.isfinite(losses["loss"])
    model.zero_grad(set_to_none=True)
    losses["loss"].backward()
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got_grad <= trainable
    # the merger's zero-initialised output conv is what the first steps must learn: it gets a gradient
    assert any(n.startswith("merger.out_block") for n in got_grad)
    assert any(n.startswith("sam2.memory_attention.") for n in got_grad)
    assert any(n.startswith("sam2.sam_mask_decoder.") for n in got_grad)
    model.zero_grad(set_to_none=True)


def test_plain_sam2_finetuning_needs_no_must3r(tmp_path):
    tr = Trainer(tiny_config(tmp_path, "model.method=sam2", "train.iterations=2"))
    assert tr.model.merger is None and tr.must3r is None
    losses = tr.run()
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not (tmp_path / "run" / "threeam_final.pt").exists()  # nothing for the 3AM tracker to load
