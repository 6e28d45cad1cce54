"""The tracker node whose discovery proposes the generated scene's true objects instead of SAM 2's automatic masks
(random weights propose one blob over the whole frame): a frame is matched to the scene by its pixels, and its
ground-truth instances are the proposals. Used by test_node_discover.py through `python -m oracle_discovery_node`."""

import sys

import numpy as np

import threeam_model.instances.proposals as proposals
from threeam_model.data.synthetic import render_scene
from threeam_ros import tracker_node

SCENE = dict(seed=5, num_frames=4, width=128, height=96, num_objects=3)


class SceneOracle:
    def __init__(self, model=None, params=None):
        self.scene = render_scene(**SCENE)
        self.oracle = proposals.OracleProposals(min_area=1)

    def __call__(self, rgb: np.ndarray):
        t = next(i for i, frame in enumerate(self.scene["rgb"]) if np.array_equal(frame, rgb))
        return self.oracle(rgb, self.scene["instance"][t])


if __name__ == "__main__":
    proposals.SamProposals = SceneOracle  # the node imports it at its first discovery
    sys.exit(tracker_node.main())
