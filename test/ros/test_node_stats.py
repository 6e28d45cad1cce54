"""The node's diagnostics numbers: a frame slower than the diagnostics period lowers processed_fps instead of making
it read 0 (D4), a stalled node decays towards 0, and a long problem reaches /diagnostics whole."""

from diagnostic_msgs.msg import DiagnosticStatus

from threeam_ros.node_stats import NodeStats, diagnostics_message


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_frame_slower_than_the_period_never_reads_zero():
    clock = FakeClock()
    stats = NodeStats(rate_window=2.0, clock=clock)
    rates = []
    for second in range(1, 31):  # diagnostics every second, a frame done every 3 s
        clock.now = 100.0 + second
        if second % 3 == 0:
            stats.count("frames_processed")
        if second >= 7:  # from the third frame on
            rates.append(stats.snapshot()["processed_fps"])
    assert min(rates) > 0.3 and max(rates) < 0.34, rates  # one frame per 3 s, whatever the phase


def test_steady_rate_and_a_stall_decays():
    clock = FakeClock()
    stats = NodeStats(rate_window=5.0, clock=clock)
    for i in range(300):  # 30 Hz for 10 s
        clock.now = 100.0 + i / 30
        stats.count("frames_processed")
    assert abs(stats.snapshot()["processed_fps"] - 30.0) < 0.5
    clock.now += 10.0  # nothing for 10 s
    snap = stats.snapshot()
    assert snap["processed_fps"] < 0.2 and snap["idle_s"] > 9.9
    message = diagnostics_message(snap, "/n: tracking", None, 0, "m").status[0].message
    assert message == "no frame processed in the last 10.0 s"


def test_long_problems_are_not_cut_and_errors_are_errors():
    stats = NodeStats()
    text = "frame rejected: " + "x" * 500
    stats.problem(text)
    status = diagnostics_message(stats.snapshot(), "/n: tracking", None, 0, "m").status[0]
    assert status.level == DiagnosticStatus.WARN and status.message == text
    status = diagnostics_message(stats.snapshot(), "/n", None, 0, "m", state="unconfigured", error="boom").status[0]
    assert status.level == DiagnosticStatus.ERROR and status.message == "boom"
    values = {kv.key: kv.value for kv in status.values}
    assert values["state"] == "unconfigured" and values["model_faults"] == "0"
