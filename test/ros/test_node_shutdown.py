"""Ctrl-C under `ros2 launch` reaches the node twice (the terminal's SIGINT to the process group, then the one launch
forwards): the node still shuts down cleanly, exit code 0 and no traceback, whenever the second signal lands and
with a frame in flight."""

import signal
import time

import pytest
import ros_helpers as rh

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("gap_s", [0.0, 0.005, 0.05, 0.3])
def test_two_sigints_still_shut_down_cleanly(tmp_path, gap_s):
    # 512 px: a frame takes ~0.1 s here, so the signals usually land while one is being tracked
    params = {**rh.TINY, "model.image_size": 512}
    # running_node asserts exit code 0 once the node has gone
    with rh.running_node(tmp_path / "tracker_node.log", params, subscribe=("labels",)) as (node, client):
        client.publish_and_wait(rh.frame(0))
        assert client.call("add_prompt", mask=rh.mask_image(rh.rect_mask(20, 20, 50, 50)), object_id=1).success
        camera = rh.Camera(client, rate_hz=30.0)  # the node is busy tracking when the signals come
        try:
            rh.wait_until(lambda: len(client.labels.messages()) >= 5, 20.0, "labels while the camera runs")
            node.proc.send_signal(signal.SIGINT)
            time.sleep(gap_s)
            node.proc.send_signal(signal.SIGINT)
            node.proc.wait(30.0)
        finally:
            camera.stop()
    log = node.log()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log and "terminate called" not in log, log[-3000:]
