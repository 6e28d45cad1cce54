"""threeam-train: train 3AM (or fine-tune plain SAM 2) with the paper's recipe.

    threeam-train --config training/configs/tiny_synthetic.yaml train.iterations=200
    torchrun --nproc_per_node 8 -m threeam_model.cli.train --config training/configs/3am_paper.yaml

Overrides are `key.sub=value` (YAML values). A run resumes from <out_dir>/checkpoints/last.pt when it exists
(use --fresh to refuse to resume). --precompute-must3r only fills the MUSt3R feature cache and exits.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="threeam-train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--config", help="YAML config (training/configs/*.yaml); defaults = the paper's recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.iterations=1000")
    p.add_argument("--fresh", action="store_true", help="fail instead of resuming when <out_dir> has a checkpoint")
    p.add_argument("--precompute-must3r", action="store_true", help="fill the MUSt3R cache for every scene and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from threeam_model.train.config import load_config
    from threeam_model.train.trainer import Trainer

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        print(f"threeam-train: bad configuration: {exc}", file=sys.stderr)
        return 2
    if cfg["train"]["device"] == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))
    trainer = Trainer(cfg)
    try:
        if args.precompute_must3r:
            if trainer.model.merger is None:
                print("threeam-train: --precompute-must3r needs model.method=3am", file=sys.stderr)
                return 2
            scenes = [s for group in trainer.dataset.sources.values() for s in group if s.has_geometry]
            for i, scene in enumerate(scenes):
                if i % trainer.world == trainer.rank:
                    path = trainer.features.precompute(scene)
                    print(f"[rank {trainer.rank}] MUSt3R cache: {path}")
            return 0
        resumed = trainer.maybe_resume()
        if resumed and args.fresh:
            print(f"threeam-train: {trainer.out_dir} already has a checkpoint and --fresh was given", file=sys.stderr)
            return 2
        if trainer.is_main:
            where = f"resuming at step {trainer.step}" if resumed else "starting"
            print(f"threeam-train: {where}; {trainer.world} process(es) on {trainer.device}; out_dir {trainer.out_dir}")
        losses = trainer.run()
        if trainer.is_main and losses:
            k = max(1, min(10, len(losses) // 4))
            print(
                f"threeam-train: done at step {trainer.step}; mean loss first {k}: {sum(losses[:k]) / k:.4f}, "
                f"last {k}: {sum(losses[-k:]) / k:.4f}"
            )
        return 0
    finally:
        trainer.close()


if __name__ == "__main__":
    sys.exit(main())
