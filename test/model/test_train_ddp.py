"""2-process torchrun (gloo, CPU) run of the toy training: ranks see different clips, parameters stay identical
across ranks after every step, and only rank 0 writes logs and checkpoints.

The test launches this same file under torchrun; its __main__ block is the per-rank harness.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 3


def _harness(out_dir: str, record_path: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from threeam_model.train.config import load_config
    from threeam_model.train.trainer import Trainer

    cfg = load_config(
        str(REPO / "training/configs/tiny_synthetic.yaml"),
        [
            f"train.out_dir={out_dir}",
            "train.progress=false",
            f"train.iterations={STEPS}",
            f"train.checkpoint_every={STEPS}",
            "data.samples_per_epoch=16",
            "data.datasets=[{type: synthetic, num_scenes: 2, num_frames: 12, width: 48, height: 36, num_objects: 2}]",
        ],
    )
    records = []

    def digest(trainer) -> str:
        h = hashlib.sha256()
        for name, p in sorted(trainer.model.named_parameters()):
            if p.requires_grad:
                h.update(name.encode())
                h.update(p.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    def on_step(trainer, item, metrics):
        mine = {
            "rank": trainer.rank,
            "step": trainer.step,
            "index": item["index"],
            "clip": [item["scene"], item["frame_indices"], item["obj_ids"]],
            "params": digest(trainer),
            "writes_logs": trainer._writer is not None or trainer._csv is not None,
            "loss": metrics["loss"],
        }
        gathered = [None] * trainer.world
        dist.all_gather_object(gathered, mine)
        records.append(gathered)

    trainer = Trainer(cfg, callbacks=[on_step])
    assert trainer.world == 2 and dist.get_backend() == "gloo"
    trainer.run()
    if trainer.rank == 0:
        pathlib.Path(record_path).write_text(json.dumps(records))
    trainer.close()


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    out_dir, record = tmp_path / "run", tmp_path / "record.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", __file__, "--harness", str(out_dir), str(record)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(record.read_text())
    assert len(records) == STEPS
    previous = None
    for step_records in records:
        r0, r1 = step_records
        assert (r0["rank"], r1["rank"]) == (0, 1) and r0["step"] == r1["step"]
        assert r0["index"] != r1["index"], "DistributedSampler must give the ranks different clips"
        assert r0["params"] == r1["params"], "parameters differ across ranks after a step"
        assert r0["params"] != previous, "the step changed nothing"
        previous = r0["params"]
        assert r0["writes_logs"] and not r1["writes_logs"]
        assert r0["loss"] == r1["loss"]  # the logged loss is the all-reduced mean
    # only rank 0 wrote: one TensorBoard event file, one CSV row per step, rank 0's checkpoints
    assert len(list((out_dir / "tb").glob("events.out.tfevents.*"))) == 1
    rows = (out_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + STEPS and [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert sorted(p.name for p in (out_dir / "checkpoints").iterdir()) == ["last.pt", f"step_{STEPS:08d}.pt"]
    assert (out_dir / "threeam_final.pt").is_file() and (out_dir / "loss_curve.png").is_file()


if __name__ == "__main__" and sys.argv[1:2] == ["--harness"]:
    _harness(sys.argv[2], sys.argv[3])
