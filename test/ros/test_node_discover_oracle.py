"""~/discover on the real middleware with an oracle mask generator (the generated scene's true objects, see
oracle_discovery_node.py): the new tracks are the scene's other objects, with the smallest free ids and their boxes;
a second discovery finds nothing new. Its own module: a second node named like test_node_discover.py's would answer
the same services."""

import numpy as np
import pytest
import ros_helpers as rh
from oracle_discovery_node import SCENE
from std_msgs.msg import Header

from threeam_model.data.synthetic import render_scene
from threeam_ros import conversions

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def scene():
    return render_scene(**SCENE)


def test_discover_with_an_oracle_generator_finds_the_scenes_other_objects(tmp_path, scene):
    log = tmp_path / "tracker_node.log"
    params = {**rh.TINY, "model.image_size": 256, "input.qos": "reliable", "discover.min_area": 40}
    with rh.running_node(log, params, module="oracle_discovery_node", reliable=True) as (_, client):
        header = Header(stamp=client.stamp(), frame_id="camera")
        client.publish_raw(conversions.rgb_to_image(scene["rgb"][0], header))  # three objects in view
        client.labels_for(header.stamp)
        instance = scene["instance"][0]
        areas = np.bincount(instance.ravel(), minlength=int(instance.max()) + 1)
        present = [i for i in range(1, len(areas)) if areas[i] >= 40]
        tracked = max(present, key=lambda i: areas[i])
        assert len(present) == 3
        assert client.call("add_prompt", object_id=1, mask=rh.mask_image(instance == tracked)).success
        resp = client.call("discover")
        assert resp.success, resp.message
        assert sorted(resp.object_ids) == list(range(2, len(present) + 1))  # the smallest free ids
        truth = sorted(conversions_box(instance == i) for i in present if i != tracked)
        got = sorted((b.x_offset, b.y_offset, b.x_offset + b.width - 1, b.y_offset + b.height - 1) for b in resp.boxes)
        for g, t in zip(got, truth, strict=True):
            assert np.abs(np.subtract(g, t)).max() <= 2, (g, t)  # through the low-res mask: 2 px cells
        again = client.call("discover")
        assert again.success and list(again.object_ids) == [], "the same objects were discovered twice"


def conversions_box(mask):
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
