"""A tiny 3AM training run on generated scenes: the loss falls, frozen weights stay bitwise unchanged, resume
continues the same loss curve, and the run leaves its logs, plot and checkpoints."""

import csv

import pytest
import torch

from threeam_model import threeam_checkpoint
from threeam_model.cli.train import main as train_main
from threeam_model.train.config import load_config
from threeam_model.train.trainer import Trainer

TINY = "training/configs/tiny_synthetic.yaml"
DATA = "data.datasets=[{type: synthetic, num_scenes: 2, num_frames: 12, width: 48, height: 36, num_objects: 2}]"


def _config(out_dir, *overrides):
    return load_config(TINY, [f"train.out_dir={out_dir}", "train.progress=false", DATA, *overrides])


def _frozen_state(trainer):
    frozen = {f"sam2.{n}": p.detach().clone() for n, p in trainer.model.sam2.named_parameters() if not p.requires_grad}
    frozen.update({f"sam2.{n}": b.detach().clone() for n, b in trainer.model.sam2.named_buffers()})
    frozen.update({f"must3r.{n}": p.detach().clone() for n, p in trainer.must3r.named_parameters()})
    return frozen


def _csv_losses(path):
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_resume_continues_the_same_curve_and_frozen_weights_stay(tmp_path):
    steps, split = 8, 4
    straight = Trainer(_config(tmp_path / "a", f"train.iterations={steps}", "train.checkpoint_every=4"))
    before = _frozen_state(straight)
    trainable_before = {n: p.detach().clone() for n, p in straight.model.named_parameters() if p.requires_grad}
    losses_a = straight.run()
    after = _frozen_state(straight)
    assert before.keys() == after.keys() and len(before) > 100
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed == [], f"frozen tensors changed: {changed[:5]}"
    moved = [
        n for n, p in straight.model.named_parameters() if p.requires_grad and not torch.equal(p, trainable_before[n])
    ]
    assert any(n.startswith("merger.") for n in moved) and any(n.startswith("sam2.sam_mask_decoder.") for n in moved)
    assert any(n.startswith("sam2.memory_attention.") for n in moved)

    first = Trainer(_config(tmp_path / "b", f"train.iterations={steps}", "train.checkpoint_every=4"))
    first.run(iterations=split)  # stops after the step-4 checkpoint
    resumed = Trainer(_config(tmp_path / "b", f"train.iterations={steps}", "train.checkpoint_every=4"))
    assert resumed.maybe_resume() and resumed.step == split
    resumed.run()
    assert _csv_losses(tmp_path / "b" / "metrics.csv") == list(enumerate(losses_a))  # bit for bit
    for name, module in straight.trainable_modules.items():
        for k, v in module.state_dict().items():
            assert torch.equal(v, resumed.trainable_modules[name].state_dict()[k]), f"{name}.{k}"

    out = tmp_path / "a"
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "last.pt",
        "step_00000004.pt",
        "step_00000008.pt",
    ]
    payload = threeam_checkpoint.read_checkpoint(out / "threeam_final.pt")
    assert payload["config"]["step"] == steps


def test_cli_refuses_bad_config_and_fresh_over_existing(tmp_path, capsys):
    assert train_main(["--config", TINY, "optim.lrr=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    args = ["--config", TINY, f"train.out_dir={tmp_path}", "train.progress=false", DATA, "train.iterations=1"]
    assert train_main(args) == 0
    assert train_main([*args, "--fresh"]) == 2
    assert "already has a checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_training_loss_falls(tmp_path):
    """64 steps of the CPU toy (tiny random SAM 2 + MUSt3R + merger, 8 repeating clips of 2 scenes)."""
    trainer = Trainer(_config(tmp_path, "train.iterations=64", "train.checkpoint_every=64"))
    trainer.run()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first, last = rows[:16], rows[-16:]

    def mean(part, key):
        return sum(float(r[key]) for r in part) / len(part)

    print(f"loss: first 16 steps {mean(first, 'loss'):.3f}, last 16 steps {mean(last, 'loss'):.3f}")
    for key in ("loss_mask", "loss_dice", "loss_iou", "loss_class"):
        print(f"{key}: {mean(first, key):.4f} -> {mean(last, key):.4f}")
    assert mean(last, "loss") < 0.5 * mean(first, "loss")
    assert mean(last, "loss_mask") < 0.5 * mean(first, "loss_mask")  # focal
    assert mean(last, "loss_iou") < mean(first, "loss_iou")
