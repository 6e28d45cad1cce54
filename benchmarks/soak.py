"""Soak of the ROS node: a long camera stream with a user clicking, removing and resetting, and resolution changes.

Starts the tracker node in its own process (by default the tiny random-weight SAM 2 at 64 px on one CPU thread,
config/tracker.yaml with reliable input QoS; `--params NAME=VALUE` overrides any parameter), then, in this process:
- a camera publishing `--frames` frames at `--rate` Hz (reliable QoS, so the publish side loses nothing; the node
  keeps only its newest frame and drops the rest by design, counted in /diagnostics frames_dropped), changing its
  resolution every `--resize-every` frames through `--sizes` (the node resets its objects at each change);
- a "user" who, every `--click-period` s, does the next step of a round: list_objects, add_prompt with points, a box
  and a mask on new ids, add_prompt refining existing ids with points and a box, list_objects, remove_object (keeping
  at most 5 objects), and in rounds 2, 7, 12, ... reset. Prompts use the size of the newest label image the user has
  seen; after a reset (by the user or by a size change) the objects are simply prompted again in later rounds;
- samplers of the node process's RSS, threads and open files (/proc/<pid>, every 0.5 s), of the node's /diagnostics
  counters, and of the end-to-end latency (a label image carries its input frame's header stamp: publish -> first
  label image with that stamp).

Prints, per tenth of the run (by frame index): frames published and the camera's rate, the node's frames received /
processed / dropped (its diagnostics), frames with label images, latency p50/p95/max, RSS mean/max, threads and open
files; then per tenth each service's answer time (client side, p50/max and calls), service failures (split into those
around a resolution change, where the user's view and the node's frame can differ in size, and the rest) and the node's
own error counters (model_faults + internal_errors + frames_rejected); then every distinct service failure, the five
slowest service answers (with the node's own time for them, from /diagnostics) and the node log's warning/error lines;
and a flatness verdict from those numbers: RSS, latency p50, service p50 (services with at least --min-calls calls in
both tenths) and threads of the last tenth against the second (the first holds the warm-up; with the default sizes
both are at the first resolution). Exit code 1 if the node died or exited non-zero, 0 otherwise (whatever the
verdict).

Run it network-isolated, like every ROS process of this project (the full run is ~6 min at 30 Hz):
    ../shared/tools/isolated $VENV/bin/python benchmarks/soak.py --frames 10000 --rate 30 --resize-every 2000
    ../shared/tools/isolated $VENV/bin/python benchmarks/soak.py --frames 300      # smoke: ~15 s, resizes every 60
    bash scripts/isolated.sh $VENV/bin/python benchmarks/soak.py --params model.image_size=128 --sizes 640x480,320x240
"""

from __future__ import annotations

import argparse
import bisect
import collections
import dataclasses
import os
import pathlib
import random
import socket
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "test")]

import ros_helpers as rh  # noqa: E402  (the node tests' harness: node process, client)

NODE_ERRORS = ("model_faults", "internal_errors", "frames_rejected")
DIAG_KEYS = ("frames_received", "frames_processed", "frames_dropped", *NODE_ERRORS)
SERVICES = ("add_prompt", "remove_object", "reset", "list_objects")
MAX_OBJECTS = 5  # the user keeps at most this many after a round's removals (the node's cap is 16)


class SetupError(RuntimeError):
    pass


@dataclasses.dataclass
class Call:
    service: str
    kind: str
    t0: float
    t1: float
    ok: bool
    message: str


def isolated() -> bool:
    return [n for _, n in socket.if_nameindex()] == ["lo"] and os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == (
        "LOCALHOST"
    )


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        w, h = item.lower().split("x")
        sizes.append((int(w), int(h)))
    return sizes


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def num(value: float, width: int, digits: int = 1) -> str:
    """A number right-aligned in `width`, or '-' for none (nan)."""
    return f"{value:{width}.{digits}f}" if value == value else f"{'-':>{width}s}"


def proc_status(pid: int) -> tuple[float, int, int] | None:
    """(RSS MiB, threads, open file descriptors) of a live process, or None."""
    try:
        fields = {}
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()
        return int(fields["VmRSS"][0]) / 1024, int(fields["Threads"][0]), len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, KeyError, IndexError, ValueError):
        return None


class Soak:
    def __init__(self, client: rh.Client, node: rh.NodeProcess, args):
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from threeam_ros import conversions

        self.client, self.node, self.args = client, node, args
        self.n = args.frames
        self.sizes = parse_sizes(args.sizes)
        self.messages = {
            size: [conversions.rgb_to_image(rh.frame(i, *size), Header(frame_id="camera")) for i in range(8)]
            for size in self.sizes
        }
        self.stop = threading.Event()
        self.died = threading.Event()
        self.lock = threading.Lock()
        # camera
        self.sent: dict[tuple[int, int], int] = {}  # stamp -> frame index
        self.publish_t: list[float] = []  # monotonic publish time per frame index
        self.publish_call_s: list[float] = []  # how long each publish() call took (reliable QoS may block)
        self.resizes: list[tuple[float, int, tuple, tuple]] = []  # (time, frame index, old size, new size)
        self.camera_size = self.sizes[0]
        self.camera_done_t: float | None = None
        # labels
        self.first_arrival: dict[tuple[int, int], float] = {}
        self.label_count = 0
        self.republished = 0  # label images with a stamp seen before (the node republishes after a prompt)
        self.seen_size: tuple[int, int] | None = None  # (W, H) of the newest label image
        # samplers
        self.proc_samples: list[tuple[float, float, int, int]] = []  # (time, RSS MiB, threads, fds)
        self.calls: list[Call] = []
        self.base: dict = {}  # the node's counters after the warm-up
        client.node.create_subscription(Image, f"{rh.NODE}/labels", self._on_labels, 50)

    # ------------------------------------------------------------------------------------------ receivers

    def _on_labels(self, msg) -> None:
        t = time.monotonic()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self.lock:
            self.label_count += 1
            self.seen_size = (msg.width, msg.height)
            if key in self.first_arrival:
                self.republished += 1
            else:
                self.first_arrival[key] = t

    def diag_items(self) -> list[tuple[float, dict[str, int]]]:
        out = []
        for t, msg in self.client.diagnostics.items():
            if not msg.status or not msg.status[0].name.startswith(rh.NODE):
                continue
            values = {kv.key: kv.value for kv in msg.status[0].values}
            if all(k in values for k in DIAG_KEYS):
                out.append((t, {k: int(values[k]) for k in DIAG_KEYS} | {"model": values.get("model", "")}))
        return out

    def settled(self, min_received: int, timeout: float) -> dict | None:
        """Newest diagnostics totals once the node received `min_received` frames and accounted for each of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.diag_items()
            if items:
                d = items[-1][1]
                counted = d["frames_processed"] + d["frames_dropped"] + d["frames_rejected"]
                if d["frames_received"] >= min_received and counted == d["frames_received"]:
                    return d
            if not self.node.alive():
                return None
            time.sleep(0.05)
        return None

    # ------------------------------------------------------------------------------------------ actors

    def warm_up(self) -> dict:
        """One frame through the node (the model's first call is slow), then the settled counters."""
        from std_msgs.msg import Header

        from threeam_ros import conversions

        deadline = time.monotonic() + 180.0
        while True:
            msg = conversions.rgb_to_image(rh.frame(0, *self.sizes[0]), Header(frame_id="camera"))
            msg.header.stamp = self.client.stamp()
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.client.image_pub.publish(msg)
            t = time.monotonic()
            while time.monotonic() - t < 5.0:
                with self.lock:
                    if key in self.first_arrival:
                        self.base = self.settled(1, 30.0)
                        if self.base is None:
                            raise SetupError("no diagnostics that account for the warm-up frames")
                        return self.base
                if not self.node.alive():
                    raise SetupError("the node died during warm-up")
                time.sleep(0.02)
            if time.monotonic() > deadline:
                raise SetupError("no label image for a warm-up frame within 180 s")

    def camera(self) -> None:
        period = 1.0 / self.args.rate
        next_t = time.monotonic()
        every = self.args.resize_every
        for i in range(self.n):
            if self.stop.is_set():
                break
            size = self.sizes[(i // every) % len(self.sizes)] if every > 0 else self.sizes[0]
            if size != self.camera_size:
                self.resizes.append((time.monotonic(), i, self.camera_size, size))
                self.camera_size = size
            msg = self.messages[size][i % 8]
            msg.header.stamp = self.client.stamp()
            t = time.monotonic()
            with self.lock:
                self.sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = i
                self.publish_t.append(t)
            self.client.image_pub.publish(msg)
            self.publish_call_s.append(time.monotonic() - t)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -period:
                next_t = time.monotonic()  # more than a period behind: carry on at the rate, no catch-up burst
        self.camera_done_t = time.monotonic()

    def sampler(self) -> None:
        while not self.stop.is_set():
            s = proc_status(self.node.proc.pid)
            if s is None or not self.node.alive():
                self.died.set()
                self.stop.set()
                return
            self.proc_samples.append((time.monotonic(), *s))
            self.stop.wait(0.5)

    def call(self, service: str, kind: str, timeout: float = 30.0, **fields):
        """Call a service; records (answer time, success); returns the response or None (timeout)."""
        client = self.client.clients[service]
        request = self.client.types[service].Request(**fields)
        done = threading.Event()
        answered: list[float] = []
        t0 = time.monotonic()
        future = client.call_async(request)

        def on_done(_):
            answered.append(time.monotonic())
            done.set()

        future.add_done_callback(on_done)
        if not done.wait(timeout):
            client.remove_pending_request(future)
            self.calls.append(Call(service, kind, t0, time.monotonic(), False, f"no answer within {timeout:.0f} s"))
            return None
        resp = future.result()
        self.calls.append(Call(service, kind, t0, answered[0], bool(resp.success), resp.message))
        return resp

    def _view(self) -> tuple[int, int]:
        """The size of the image the user sees; after a camera resize, waits (up to 5 s) for the new size."""
        deadline = time.monotonic() + 5.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                seen = self.seen_size
            if seen == self.camera_size:
                break
            time.sleep(0.02)
        with self.lock:
            return self.seen_size or self.camera_size

    def _wait_new_labels(self, count: int, timeout: float = 5.0) -> None:
        with self.lock:
            target = self.label_count + count
        deadline = time.monotonic() + timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                if self.label_count >= target:
                    return
            time.sleep(0.02)

    def user(self) -> None:
        from threeam_interfaces.msg import PromptPoint

        rnd = random.Random(self.args.seed)
        known: list[int] = []
        next_id = 1
        rounds = 0

        def new_id() -> int:
            nonlocal next_id
            while next_id in known:
                next_id = next_id % 500 + 1
            obj_id, next_id = next_id, next_id % 500 + 1
            return obj_id

        def listed() -> list[int]:
            resp = self.call("list_objects", "list")
            return sorted(o.object_id for o in resp.objects) if resp is not None and resp.success else list(known)

        def pause() -> bool:
            return self.stop.wait(self.args.click_period)

        while not self.stop.is_set():
            rounds += 1
            steps = [
                "list",
                "points new",
                "box new",
                "mask new",
                "points refine",
                "box refine",
                "list",
                "remove",
            ]
            if rounds % 5 == 2:  # rounds 2, 7, 12, ...: a smoke run resets too
                steps.append("reset")
            for step in steps:
                if self.stop.is_set():
                    return
                w, h = self._view()
                if step == "list":
                    known = listed()
                elif step.endswith("new") or step.endswith("refine"):
                    if step.endswith("refine"):
                        if not known:
                            continue
                        obj_id = rnd.choice(known)
                    else:
                        obj_id = new_id()
                    cx, cy = rnd.uniform(0.2, 0.8) * w, rnd.uniform(0.2, 0.8) * h
                    bw, bh = 0.15 * w, 0.15 * h
                    fields = {}
                    if step.startswith("points"):
                        fields["points"] = [
                            PromptPoint(x=float(cx), y=float(cy), positive=True),
                            PromptPoint(x=float(min(cx + bw, w - 1)), y=float(min(cy + bh, h - 1)), positive=False),
                        ]
                    elif step.startswith("box"):
                        fields["box"] = [float(cx - bw), float(cy - bh), float(cx + bw), float(cy + bh)]
                    else:
                        x0, y0 = int(cx - bw), int(cy - bh)
                        mask = rh.rect_mask(x0, y0, int(cx + bw), int(cy + bh), w, h)
                        fields["mask"] = rh.mask_image(mask)
                    resp = self.call("add_prompt", step, object_id=obj_id, **fields)
                    if resp is not None and resp.success and obj_id not in known:
                        known.append(obj_id)
                elif step == "remove":
                    known = listed()
                    victims = [rnd.choice(known)] if known else []
                    rest = [i for i in known if i not in victims]
                    victims += rnd.sample(rest, max(0, len(rest) - MAX_OBJECTS))
                    for obj_id in victims:
                        self.call("remove_object", "remove", object_id=obj_id)
                        known.remove(obj_id)
                elif step == "reset":
                    self.call("reset", "reset")
                    known = []
                    self._wait_new_labels(2)  # the user waits for the image to come back before clicking again
                if pause():
                    return

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> dict | None:
        threads = [threading.Thread(target=f, daemon=True) for f in (self.sampler, self.user)]
        for t in threads:
            t.start()
        self.camera()  # in this thread: returns after the last frame (or when the node died)
        if not self.died.is_set() and self.publish_t:
            last = max(self.sent, key=self.sent.get)
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline and not self.died.is_set():
                with self.lock:
                    if last in self.first_arrival:
                        break
                time.sleep(0.05)
        self.stop.set()
        for t in threads:
            t.join(60.0)
        if self.died.is_set():
            return None
        return self.settled(self.base["frames_received"] + len(self.publish_t), 20.0)


# ---------------------------------------------------------------------------------------------- report


def report(soak: Soak, base: dict, final: dict | None, args) -> list[str]:
    """Prints the tables; returns the verdict's problems (empty: flat)."""
    n, tenths = len(soak.publish_t), 10
    if n < tenths:
        print(f"only {n} frames published: no tenths to report")
        return ["too few frames"]
    bounds = [k * n // tenths for k in range(tenths)]
    t_start = [soak.publish_t[b] for b in bounds]
    end_t = soak.camera_done_t or soak.publish_t[-1]

    def tenth_of(t: float) -> int:
        return min(max(bisect.bisect_right(t_start, t) - 1, 0), tenths - 1)

    index_to_key = {i: key for key, i in soak.sent.items()}
    diag = soak.diag_items()
    diag_t = [t for t, _ in diag]

    def totals_at(t: float, fallback: dict) -> dict:
        k = bisect.bisect_right(diag_t, t) - 1
        return diag[k][1] if k >= 0 and diag[k][1]["frames_received"] >= fallback["frames_received"] else fallback

    resize_t = [t for t, *_ in soak.resizes]

    def near_resize(c: Call) -> bool:
        return any(c.t0 - 0.5 <= t <= c.t1 + 2.0 for t in resize_t) or any(t <= c.t0 <= t + 3.0 for t in resize_t)

    rows, lat_p50, rss_mean, thr_max = [], [], [], []
    svc_p50, svc_n = collections.defaultdict(list), collections.defaultdict(list)
    svc_rows = []
    for k in range(tenths):
        lo, hi = bounds[k], (bounds[k + 1] if k + 1 < tenths else n)
        t0, t1 = t_start[k], (t_start[k + 1] if k + 1 < tenths else end_t)
        lats = []
        for i in range(lo, hi):
            arrived = soak.first_arrival.get(index_to_key.get(i))
            if arrived is not None:
                lats.append(1e3 * (arrived - soak.publish_t[i]))
        start = base if k == 0 else totals_at(t0, base)
        end = final if (k == tenths - 1 and final is not None) else totals_at(t1, start)
        delta = {key: end[key] - start[key] for key in DIAG_KEYS}
        procs = [s for s in soak.proc_samples if tenth_of(s[0]) == k]
        rss = [s[1] for s in procs]
        sizes = sorted({soak.sizes[(i // args.resize_every) % len(soak.sizes)] for i in (lo, hi - 1)})
        cam_hz = (hi - lo - 1) / (soak.publish_t[hi - 1] - soak.publish_t[lo]) if hi - lo > 1 else float("nan")
        rows.append(
            f"{k + 1:>5d} {lo:>5d}-{hi - 1:<5d} {'/'.join(f'{w}x{h}' for w, h in sizes):>15s} {hi - lo:>6d} "
            f"{cam_hz:6.1f} {1e3 * max(soak.publish_call_s[lo:hi]):7.1f} {delta['frames_received']:>6d} "
            f"{delta['frames_processed']:>6d} {delta['frames_dropped']:>6d} {len(lats):>6d} "
            f"{pct(lats, 50):7.1f} {pct(lats, 95):7.1f} {max(lats, default=float('nan')):7.1f} "
            f"{statistics.mean(rss) if rss else float('nan'):8.1f} {max(rss, default=float('nan')):8.1f} "
            f"{max((s[2] for s in procs), default=0):>4d} {max((s[3] for s in procs), default=0):>4d}"
        )
        lat_p50.append(pct(lats, 50))
        rss_mean.append(statistics.mean(rss) if rss else float("nan"))
        thr_max.append((max((s[2] for s in procs), default=0), max((s[3] for s in procs), default=0)))
        calls = [c for c in soak.calls if tenth_of(c.t0) == k]
        cells = []
        for name in SERVICES:
            times = [1e3 * (c.t1 - c.t0) for c in calls if c.service == name]
            svc_p50[name].append(pct(times, 50))
            svc_n[name].append(len(times))
            cells.append(f"{len(times):>4d} {num(pct(times, 50), 6)} {num(max(times, default=float('nan')), 7)}")
        failed = [c for c in calls if not c.ok]
        at_resize = sum(near_resize(c) for c in failed)
        svc_rows.append(
            f"{k + 1:>5d}  " + "  ".join(cells) + f"  {len(failed) - at_resize:>5d} {at_resize:>7d} "
            f"{sum(delta[e] for e in NODE_ERRORS):>8d}"
        )

    print()
    print("per tenth of the run (by frame index); node counters from its /diagnostics; latency = publish -> labels")
    print(
        f"{'tenth':>5s} {'frames':^11s} {'size(s)':>15s} {'pub':>6s} {'cam Hz':>6s} {'pub max':>7s} {'recv':>6s} "
        f"{'proc':>6s} {'drop':>6s} {'labels':>6s} {'lat p50':>7s} {'p95':>7s} {'max ms':>7s} {'RSS mean':>8s} "
        f"{'max MiB':>8s} {'thr':>4s} {'fds':>4s}"
    )
    for row in rows:
        print(row)
    print()
    print("service answer times per tenth (client side, ms): calls, p50, max; failures; node errors")
    head = "  ".join(f"{name:^19s}" for name in SERVICES)
    print(f"{'tenth':>5s}  {head}  {'fails':>5s} {'@resize':>7s} {'node err':>8s}")
    print(f"{'':>5s}  " + "  ".join(f"{'n':>4s} {'p50':>6s} {'max':>7s}" for _ in SERVICES))
    for row in svc_rows:
        print(row)

    # totals
    published = len(soak.publish_t)
    print()
    if final is None:
        print("the node's counters did not settle (or the node died): totals from its newest diagnostics")
        items = soak.diag_items()
        final_ = items[-1][1] if items else base
    else:
        final_ = final
    tot = {key: final_[key] - base[key] for key in DIAG_KEYS}
    run_s = (soak.camera_done_t or soak.publish_t[-1]) - soak.publish_t[0]
    print(
        f"totals: {published} frames published in {run_s:.1f} s ({published / run_s:.1f} Hz); node received "
        f"{tot['frames_received']}, processed {tot['frames_processed']}, dropped {tot['frames_dropped']}, rejected "
        f"{tot['frames_rejected']}, model_faults {tot['model_faults']}, internal_errors {tot['internal_errors']}; "
        f"frames with label images {sum(1 for key in soak.sent if key in soak.first_arrival)}, label images "
        f"republished after a prompt {soak.republished}; {len(soak.resizes)} resolution changes"
    )
    by_kind = collections.Counter((c.service, c.kind) for c in soak.calls)
    ok_kind = collections.Counter((c.service, c.kind) for c in soak.calls if c.ok)
    print(
        "service calls (ok/all): "
        + ", ".join(f"{s} {k} {ok_kind[(s, k)]}/{v}" for (s, k), v in sorted(by_kind.items()))
    )
    failures = collections.Counter(
        (c.service, "at resize" if near_resize(c) else "other", _generic(c.message)) for c in soak.calls if not c.ok
    )
    if failures:
        print("service failures (count, service, when, message):")
        for (service, when, message), count in failures.most_common():
            print(f"  {count:>4d} {service} [{when}] {message}")
    else:
        print("service failures: none")
    print("slowest service answers (client side; node side: the node's own max for that service in the diagnostics")
    print("periods around the answer, which excludes DDS and the client's executor):")
    node_max = _node_service_max(soak)
    for c in sorted(soak.calls, key=lambda c: c.t0 - c.t1)[:5]:
        inside = [v for t, name, v in node_max if name == c.service and c.t1 - 0.6 <= t <= c.t1 + 1.2]
        frame = bisect.bisect_right(soak.publish_t, c.t0)
        print(
            f"  {1e3 * (c.t1 - c.t0):8.1f} ms {c.service} {c.kind} at frame {frame} "
            f"({c.t0 - soak.publish_t[0]:.1f} s into the run); "
            f"node side {num(max(inside, default=float('nan')), 0)} ms; {'ok' if c.ok else 'FAILED'}"
        )

    # verdict: the last tenth against the second (the first holds the warm-up)
    problems = []
    print()
    print("flatness, last tenth vs second tenth:")
    a, b = rss_mean[1], rss_mean[-1]
    growth = b - a
    growth_pct = 100 * growth / a if a else float("nan")
    ys = [v for v in rss_mean[1:] if v == v]
    slope = float(np.polyfit(np.arange(len(ys)), ys, 1)[0]) if len(ys) >= 2 else float("nan")
    per_k = slope * 10_000 / n  # MiB per tenth -> MiB per 1,000 frames
    print(
        f"  RSS mean {a:.1f} -> {b:.1f} MiB: {growth:+.1f} MiB ({growth_pct:+.1f} %); least-squares slope over tenths "
        f"2-10 {per_k:+.2f} MiB per 1000 frames; max {max(s[1] for s in soak.proc_samples):.1f} MiB"
    )
    if not growth_pct <= args.rss_tolerance:
        problems.append(f"RSS grew {growth_pct:+.1f} % (> {args.rss_tolerance} %)")
    ratio = lat_p50[-1] / lat_p50[1] if lat_p50[1] else float("nan")
    print(f"  latency p50 {lat_p50[1]:.1f} -> {lat_p50[-1]:.1f} ms: ratio {ratio:.2f}")
    if not ratio <= args.ratio_tolerance:
        problems.append(f"latency p50 x{ratio:.2f} (> x{args.ratio_tolerance})")
    for name in SERVICES:
        first, last = svc_p50[name][1], svc_p50[name][-1]
        r = last / first if first else float("nan")
        few = min(svc_n[name][1], svc_n[name][-1]) < args.min_calls
        note = f" (not judged: {svc_n[name][1]} and {svc_n[name][-1]} calls, under --min-calls)" if few else ""
        print(f"  {name} p50 {num(first, 0)} -> {num(last, 0)} ms: ratio {num(r, 0, 2)}{note}")
        if r == r and not few and not r <= args.ratio_tolerance:
            problems.append(f"{name} p50 x{r:.2f} (> x{args.ratio_tolerance})")
    print(f"  node threads / open files (max) {thr_max[1][0]} / {thr_max[1][1]} -> {thr_max[-1][0]} / {thr_max[-1][1]}")
    if thr_max[-1][0] > thr_max[1][0] + 2 or thr_max[-1][1] > thr_max[1][1] + 2:  # executor pools start lazily
        problems.append("node threads or open files grew")
    other = sum(1 for c in soak.calls if not c.ok and not near_resize(c))
    if other:
        problems.append(f"{other} service failure(s) away from a resolution change")
    node_err = sum(tot[e] for e in NODE_ERRORS)
    if node_err:
        problems.append(f"{node_err} node error(s) (model_faults + internal_errors + frames_rejected)")
    return problems


def _node_service_max(soak: Soak) -> list[tuple[float, str, float]]:
    """(arrival time, service, the node's max answer ms in that diagnostics period) from its /diagnostics."""
    out = []
    for t, msg in soak.client.diagnostics.items():
        if not msg.status or not msg.status[0].name.startswith(rh.NODE):
            continue
        for kv in msg.status[0].values:
            if kv.key.startswith("latency_ms.service.") and kv.key.endswith(".max"):
                out.append((t, kv.key[len("latency_ms.service.") : -len(".max")], float(kv.value)))
    return out


def _generic(message: str) -> str:
    """A failure message with its numbers replaced, so that repeats group."""
    import re

    return re.sub(r"\d+(\.\d+)?", "#", message)[:160]


def log_lines(log: str) -> None:
    kinds = collections.Counter()
    samples: dict[str, str] = {}
    for line in log.splitlines():
        for level in ("[WARN]", "[ERROR]", "Traceback"):
            if level in line:
                key = _generic(line.split("]: ", 1)[-1])[:120]
                kinds[(level, key)] += 1
                samples.setdefault(key, line)
    if not kinds:
        print("node log: no warnings or errors")
        return
    print("node log warnings/errors (count, level, message):")
    for (level, key), count in kinds.most_common(12):
        print(f"  {count:>4d} {level} {key}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000, help="frames published (300: a quick smoke run)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    parser.add_argument(
        "--resize-every", type=int, help="frames between resolution changes (default: a fifth of --frames)"
    )
    parser.add_argument("--sizes", default="320x240,640x360,256x192,480x360", help="camera sizes WxH, cycled")
    parser.add_argument("--click-period", type=float, default=0.3, help="seconds between the user's service calls")
    parser.add_argument("--seed", type=int, default=0, help="the user's random choices")
    parser.add_argument(
        "--params", action="append", default=[], metavar="NAME=VALUE", help="node parameter override (repeatable)"
    )
    parser.add_argument("--rss-tolerance", type=float, default=5.0, help="verdict: RSS growth allowed, percent")
    parser.add_argument("--ratio-tolerance", type=float, default=1.5, help="verdict: p50 ratio allowed, last/second")
    parser.add_argument(
        "--min-calls", type=int, default=10, help="verdict: judge a service's p50 only with this many calls per tenth"
    )
    parser.add_argument("--log", type=pathlib.Path, help="keep the node log at this path")
    args = parser.parse_args()
    if args.resize_every is None:
        args.resize_every = max(args.frames // 5, 1)
    if not isolated():
        print("run this network-isolated (../shared/tools/isolated or scripts/isolated.sh)", file=sys.stderr)
        return 2
    params = {**rh.TINY, "input.qos": "reliable", "diagnostics.period": 0.5}
    for item in args.params:
        name, value = item.split("=", 1)
        params[name] = yaml.safe_load(value)  # typed as ROS 2 reads `-p name:=value`

    with tempfile.TemporaryDirectory() as tmp:
        log = args.log or pathlib.Path(tmp) / "tracker_node.log"
        node = rh.NodeProcess(log, params)
        client = rh.Client(name="soak_bench", reliable=True, subscribe=())
        code, final, soak, problems = None, None, None, []
        try:
            client.wait_ready(node, timeout=180.0)
            soak = Soak(client, node, args)
            base = soak.warm_up()
            print(
                f"soak: {args.frames} frames at {args.rate:g} Hz, sizes {args.sizes} changing every "
                f"{args.resize_every} frames, a user call every {args.click_period:g} s; node pid {node.proc.pid}, "
                f"model {base['model']}; params {params}",
                flush=True,
            )
            t = time.monotonic()
            final = soak.run()
            print(f"ran {time.monotonic() - t:.1f} s", flush=True)
        except (SetupError, rh.pytest.fail.Exception) as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
        finally:
            client.close()
            died = not node.alive()
            code = node.stop()
            text = node.log()
        if soak is not None and soak.publish_t:
            problems = report(soak, base, final, args)
        print()
        log_lines(text)
        if died or code != 0:
            print(f"\nTHE NODE {'DIED' if died else 'EXITED'} with code {code}; its log's end:\n{text[-4000:]}")
            return 1
        if soak is None or not soak.publish_t:
            print(text[-4000:])
            return 2
    print()
    print("verdict: FLAT" if not problems else "verdict: NOT FLAT: " + "; ".join(problems))
    print(f"node exited with {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
