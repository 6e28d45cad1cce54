"""The training loop: paper recipe (sec. 4) on PyTorch's own distributed engine.

One process per device; under `torchrun` (WORLD_SIZE > 1) it joins the process group (NCCL on GPUs, gloo on
CPU), wraps the model in DistributedDataParallel and splits clips across ranks with a DistributedSampler. Batch 1
per rank. Only rank 0 writes: metrics.csv, TensorBoard events (tb/), loss_curve.png, checkpoints/ and the final
3AM checkpoint (threeam_final.pt, loadable by the tracker).

Exact resume: a checkpoint holds the step, the trainable weights, AdamW's state and every RNG state; clips and
prompt plans are drawn from (seed, epoch, position) and (seed, step, rank), so a resumed run replays the same
clips and prompts and its loss curve continues the uninterrupted one bit for bit (on the same hardware).
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from threeam_model.data.sampling import FrameSampler
from threeam_model.train.config import TRAINED_MODEL_KNOBS
from threeam_model.train.data import ClipDataset, ResumableSampler
from threeam_model.train.losses import LOSS_KEYS, LossWeights, video_losses
from threeam_model.train.model_step import ThreeAMTrainModel, freeze_for_3am, mask_targets, sam2_input
from threeam_model.train.must3r_features import Must3rFeatures
from threeam_model.train.prompting import PromptSchedule, plan_prompts
from threeam_model.train.sources import build_sources
from threeam_model.train.trainable import trainable_parts

CSV_FIELDS = ["step", "epoch", "loss", *LOSS_KEYS, "mode", "dataset", "scene", "frames", "objects", "lr_scale", "sec"]


def _step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Trainer:
    def __init__(self, cfg: dict, callbacks: list[Callable] | None = None):
        self.cfg = cfg
        self.callbacks = list(callbacks or [])
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        tcfg = cfg["train"]
        want = tcfg["device"]
        use_cuda = torch.cuda.is_available() if want == "auto" else want.startswith("cuda")
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        self.is_main = self.rank == 0
        self.out_dir = pathlib.Path(tcfg["out_dir"])
        self.seed = int(cfg["seed"])
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)  # same on every rank: identical initial weights (DDP also broadcasts them)

        self._build_model()
        self._build_data()
        self._build_optimizer()
        self.step = 0
        self._writer = None
        self._csv = None
        self._losses: list[float] = []

    # ------------------------------------------------------------------------------------------------ building
    def _build_model(self) -> None:
        from threeam_model import factory

        m = self.cfg["model"]
        values = {name: m[name] for name in TRAINED_MODEL_KNOBS}
        if m["tiny"]:
            values.update(sam2_checkpoint=None, must3r_checkpoint=None)
        tracker_cfg = factory.TrackerConfig(**values, device=str(self.device), seed=self.seed)
        merger = None
        self.must3r = None
        if tracker_cfg.method == "3am":  # the tracker's assembly (factory.build_threeam), without the stream around it
            sam2, must3r_model, merger = factory.build_threeam_parts(tracker_cfg)
            must3r_model.eval().requires_grad_(False)
            self.must3r = must3r_model
            merger = merger.to(self.device)
            feat_layers = (0, *merger.cfg.merge_layers)

            def stream_factory():  # with training's memory cap (model.must3r_max_keyframes)
                return factory.must3r_stream(must3r_model, tracker_cfg, feat_layers=feat_layers)

            cache = self.cfg["must3r"]["cache_dir"] or self.out_dir / "must3r_cache"
            self.features = Must3rFeatures(stream_factory, cache, getattr(torch, self.cfg["must3r"]["cache_dtype"]))
        else:
            sam2 = factory.build_sam2_model(tracker_cfg)
        if m["threeam_checkpoint"]:
            from threeam_model import threeam_checkpoint

            if merger is None:
                raise ValueError("model.threeam_checkpoint is a 3AM checkpoint; it needs model.method=3am")
            threeam_checkpoint.load_checkpoint(m["threeam_checkpoint"], merger, sam2)
        self.model = ThreeAMTrainModel(sam2, merger, PromptSchedule(**self.cfg["prompting"])).to(self.device)
        self.groups = freeze_for_3am(self.model, self.cfg["optim"]["lr"])
        self.model.train()
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # as SAM 2: mask-prompted frames skip the decoder
            )
        self.loss_weights = LossWeights(**self.cfg["loss"])

    def _build_data(self) -> None:
        sources, weights = build_sources(self.cfg["data"]["datasets"], self.seed)
        s = self.cfg["sampling"]
        sampler = FrameSampler(
            num_frames=s["num_frames"],
            tau=s["tau"],
            fov_prob=s["fov_prob"],
            max_objects=s["max_objects"],
            max_candidates=s["max_candidates"],
        )
        self.dataset = ClipDataset(sources, sampler, self.cfg["data"]["samples_per_epoch"], self.seed, weights)
        if self.world > 1:
            self.index_sampler = torch.utils.data.DistributedSampler(
                self.dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed
            )
        else:
            self.index_sampler = _SeededShuffle(len(self.dataset), self.seed)
        self.steps_per_epoch = len(self.index_sampler)

    def _build_optimizer(self) -> None:
        param_groups = []
        self.base_lrs = []
        for g in self.groups:
            decay = [p for p in g["params"] if p.ndim >= 2]
            no_decay = [p for p in g["params"] if p.ndim < 2]  # biases, norm scales, 1-D embeddings
            for params, wd in ((decay, self.cfg["optim"]["weight_decay"]), (no_decay, 0.0)):
                if params:
                    param_groups.append({"params": params, "lr": g["lr"], "weight_decay": wd, "name": g["name"]})
                    self.base_lrs.append(g["lr"])
        self.optimizer = torch.optim.AdamW(param_groups)

    # ------------------------------------------------------------------------------------------------ state
    @property
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return trainable_parts(self.model.sam2, self.model.merger)

    def checkpoint_path(self, step: int | None = None) -> pathlib.Path:
        d = self.out_dir / "checkpoints"
        return d / ("last.pt" if step is None else f"step_{step:08d}.pt")

    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        payload = {
            "step": self.step,
            "world_size": self.world,
            "config": self.cfg,
            "trainable": {k: m.state_dict() for k, m in self.trainable_modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        path = self.checkpoint_path(self.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        last = self.checkpoint_path()
        torch.save(payload, last.with_name("last.pt.tmp"))
        os.replace(last.with_name("last.pt.tmp"), last)
        keep = int(self.cfg["train"]["keep_checkpoints"])
        old = sorted(path.parent.glob("step_*.pt"))[:-keep] if keep > 0 else []
        for p in old:
            p.unlink()

    def load_checkpoint(self, path) -> None:
        payload = torch.load(path, map_location=self.device, weights_only=False)  # our own file: RNG states pickle
        if payload["world_size"] != self.world:
            raise ValueError(
                f"{path} was written by a {payload['world_size']}-process run; resume with the same number of "
                f"processes ({self.world} now) to replay the same clips"
            )
        for k, m in self.trainable_modules.items():
            m.load_state_dict(payload["trainable"][k])
        self.optimizer.load_state_dict(payload["optimizer"])
        rng = payload["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        self.step = int(payload["step"])

    def maybe_resume(self) -> bool:
        last = self.checkpoint_path()
        if last.is_file():
            self.load_checkpoint(last)
            return True
        return False

    # ------------------------------------------------------------------------------------------------ one step
    def lr_scale(self, step: int) -> float:
        if self.cfg["optim"]["schedule"] == "constant":
            return 1.0
        total = int(self.cfg["train"]["iterations"])
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    def clip_features(self, item: dict):
        if self.model.merger is None:
            return None
        if item["mode"] == "fov":
            return self.features.cached(item["source"], item["frame_indices"])
        return self.features.on_the_fly(item["frames"])

    def train_step(self, item: dict) -> dict:
        step_rng = np.random.default_rng([self.seed, self.step, self.rank])
        torch.manual_seed(_step_seed(self.seed, self.step, self.rank))  # point sampling, dropout
        scale = self.lr_scale(self.step)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * scale
        size = self.model.image_size
        images = sam2_input(item["frames"], size).to(self.device)
        targets = mask_targets(item["masks"], size).to(self.device)
        must3r_frames = self.clip_features(item)
        plan = plan_prompts(self.model.schedule, len(images), step_rng)
        num_objects = torch.tensor(float(targets.shape[1]), device=self.device)
        if self.world > 1:  # SAM 2 normalises by the number of objects averaged over ranks
            dist.all_reduce(num_objects)
            num_objects = num_objects / self.world
        amp = self.cfg["train"]["amp_dtype"]
        autocast = torch.autocast(self.device.type, dtype=getattr(torch, amp), enabled=amp != "float32")
        with autocast:
            module = self.ddp if self.ddp is not None else self.model
            outputs = module(images, targets, plan, must3r_frames, item["frames"].shape[1:3], step_rng)
            losses = video_losses(outputs, targets.float(), self.loss_weights, float(num_objects.clamp(min=1)))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        clip = self.cfg["optim"]["grad_clip"]
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], clip)
        self.optimizer.step()
        values = torch.stack([losses["loss"].detach()] + [losses[k].detach() for k in LOSS_KEYS]).float()
        if self.world > 1:
            dist.all_reduce(values)
            values = values / self.world
        metrics = dict(zip(["loss", *LOSS_KEYS], values.tolist()))
        metrics["lr_scale"] = scale
        return metrics

    # ------------------------------------------------------------------------------------------------ loop
    def _items(self, start_step: int):
        """Clips for steps start_step, start_step + 1, ... (epoch and position derived from the step)."""
        epoch, pos = divmod(start_step, self.steps_per_epoch)
        while True:
            self.dataset.set_epoch(epoch)
            self.index_sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_size=None,
                sampler=ResumableSampler(self.index_sampler, pos),
                num_workers=int(self.cfg["data"]["num_workers"]),
                collate_fn=_as_is,
            )
            for item in loader:
                yield epoch, item
            epoch, pos = epoch + 1, 0

    def _open_logs(self) -> None:
        if not self.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = self.out_dir / "metrics.csv"
        rows = []
        if csv_path.is_file():  # resume: keep the rows before the resumed step, so the curve continues cleanly
            with open(csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < self.step]
        self._csv_file = open(csv_path, "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_FIELDS)
        self._csv.writeheader()
        self._csv.writerows(rows)
        self._losses = [float(r["loss"]) for r in rows]
        self._writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step)
        import yaml

        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))

    def _log(self, epoch: int, item: dict, metrics: dict, sec: float) -> None:
        if not self.is_main:
            return
        row = {
            "step": self.step,
            "epoch": epoch,
            **{k: repr(metrics[k]) for k in ["loss", *LOSS_KEYS]},
            "mode": item["mode"],
            "dataset": item["dataset"],
            "scene": item["scene"],
            "frames": len(item["frame_indices"]),
            "objects": len(item["obj_ids"]),
            "lr_scale": f"{metrics['lr_scale']:.6g}",
            "sec": f"{sec:.3f}",
        }
        self._csv.writerow(row)
        self._csv_file.flush()
        for k in ["loss", *LOSS_KEYS]:
            self._writer.add_scalar(f"train/{k}", metrics[k], self.step)
        self._writer.add_scalar("train/lr_scale", metrics["lr_scale"], self.step)
        self._losses.append(metrics["loss"])

    def plot(self) -> pathlib.Path | None:
        if not self.is_main:
            return None
        from threeam_model.train.plots import plot_loss_curves

        return plot_loss_curves(self.out_dir / "metrics.csv", self.out_dir / "loss_curve.png")

    def export(self) -> pathlib.Path | None:
        """The trained weights as a 3AM checkpoint for the tracker (3AM runs only, rank 0)."""
        if not self.is_main or self.model.merger is None:
            return None
        from threeam_model import threeam_checkpoint

        m = self.cfg["model"]
        meta = {
            "sam2_variant": m["variant"],
            "sam2_image_size": self.model.image_size,
            "must3r": m["must3r"],
            "step": self.step,
            "tiny": bool(m["tiny"]),
        }
        return threeam_checkpoint.save_checkpoint(
            self.out_dir / "threeam_final.pt", self.model.merger, self.model.sam2, meta
        )

    def run(self, iterations: int | None = None) -> list[float]:
        """Train up to `iterations` total steps (default: train.iterations); returns rank 0's logged losses."""
        total = int(iterations if iterations is not None else self.cfg["train"]["iterations"])
        tcfg = self.cfg["train"]
        self._open_logs()
        bar = None
        if self.is_main and tcfg["progress"]:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="3AM training", dynamic_ncols=True)
        try:
            for epoch, item in self._items(self.step):
                if self.step >= total:
                    break
                t0 = time.perf_counter()
                metrics = self.train_step(item)
                self._log(epoch, item, metrics, time.perf_counter() - t0)
                self.step += 1
                for cb in self.callbacks:
                    cb(self, item, metrics)
                if bar is not None:
                    bar.update(1)
                    if self.step % int(tcfg["log_every"]) == 0:
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}", mode=item["mode"])
                if self.step % int(tcfg["checkpoint_every"]) == 0 or self.step == total:
                    self.save_checkpoint()
            if self.is_main:
                self.plot()
                self.export()
        finally:
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.close()
                self._csv_file.close()
        return list(self._losses)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            # Every rank must be done before any tears down: a gloo peer that vanishes mid-collective aborts the
            # other rank ("terminate called without an active exception").
            dist.barrier()
            dist.destroy_process_group()


def _as_is(item):
    return item  # keep numpy arrays and the source object as they are (no tensor conversion)


class _SeededShuffle(torch.utils.data.Sampler):
    """Single-process counterpart of DistributedSampler: a fresh permutation per epoch from (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
