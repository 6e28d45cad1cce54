"""Memory policies on a CPU: ms per frame of each policy against the default, 1 and 4 objects, one run.

    python benchmarks/memory_policies.py                      # tiny and SAM 2.1-t@512, 640x480
    python benchmarks/memory_policies.py --models tiny --frames 20

The paper's Table 2 reports SAM2Long at about half of SAM 2's FPS and DAM4SAM within 15% of it; here the ratios
are measured in one run on the same frames (a rendered room, objects prompted with boxes on frame 0), random
weights (they time like the released ones), one CPU thread by default. Also printed: the state held per policy
after the run (tensor bytes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_models import prompt_side_by_side, sam2_by_name

from threeam_model.data.synthetic import render_scene
from threeam_model.streaming import StreamingSAM2
from threeam_model.streaming.policies import MEMORY_POLICIES, policy_options


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,t512", help="comma list of tiny, t512")
    p.add_argument("--frames", type=int, default=12, help="tracked frames per run (the first 2 warm up)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clip = render_scene(seed=0, num_frames=args.frames + 1, width=640, height=480, num_objects=4)["rgb"]
    print(f"# memory_policies: 640x480, {args.threads} CPU thread(s), median of {args.frames - 2} frames")
    print("| model | policy | objects | ms/frame | x sam2 | state (KB) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = sam2_by_name(name)
        for n in (1, 4):
            base = None
            for policy in MEMORY_POLICIES:
                tracker = StreamingSAM2(model, **policy_options(policy, model, 8))
                tracker.track(clip[0])
                prompt_side_by_side(tracker, n)
                times = []
                with torch.inference_mode():
                    for i, frame in enumerate(clip[1:]):
                        t0 = time.perf_counter()
                        tracker.track(frame)
                        if i >= 2:
                            times.append(time.perf_counter() - t0)
                ms = 1000 * statistics.median(times)
                base = ms if base is None else base
                print(
                    f"| {name} | {policy} | {n} | {ms:.1f} | {ms / base:.2f} | {tracker.state_nbytes() / 1e3:.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
