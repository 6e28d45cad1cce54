"""One name and one default per knob: every re-identification threshold (ReIDConfig's declared knobs) and the
tracker's caps and memory policy (TrackerConfig's knobs) are node parameters and threeam-track options with the same
default and description, derived rather than listed, and a value set there reaches the tracker's config; the
training config's MUSt3R memory cap is the tracker's knob and default."""

import dataclasses

import pytest

from threeam_model.cli import track as cli
from threeam_model.factory import TrackerConfig
from threeam_model.knobs import knobs_of
from threeam_model.reid import ReIDConfig
from threeam_model.train.config import DEFAULTS
from threeam_ros.params import PARAMS_BY_NAME, check_value, tracker_config

KNOBS = knobs_of(ReIDConfig)
TRACKER_KNOBS = knobs_of(TrackerConfig)


def test_the_trackers_caps_memory_and_runtime_are_knobs():
    names = {k.name for k in TRACKER_KNOBS}
    assert {"max_objects", "max_conditioning_frames", "must3r_max_keyframes", "batch_objects", "memory_policy"} <= names
    assert {"must3r", "dtype", "compile", "backend"} <= names
    assert {k.group for k in TRACKER_KNOBS} == {"model", "tracker"}


@pytest.mark.parametrize("k", TRACKER_KNOBS, ids=lambda k: k.name)
def test_each_tracker_knob_is_a_node_parameter_and_a_cli_option_with_its_default(k):
    param = PARAMS_BY_NAME[f"{k.group}.{k.name}"]
    assert param.default == k.default and type(param.default) is type(k.default)
    assert param.description == k.description and tuple(param.choices) == tuple(k.choices)
    args = cli.build_parser().parse_args(["clip.mp4"])
    if k.name == "must3r":  # threeam-track's --must3r: 512, but 224 for the demo (see test_track_cli)
        assert cli.config_from_args(args)[0].must3r == k.default
    else:
        assert getattr(args, k.name) == k.default
    cfg = {name: p.default for name, p in PARAMS_BY_NAME.items()}
    assert getattr(tracker_config(cfg), k.name) == k.default


def test_every_reid_field_is_a_declared_knob():
    assert {k.name for k in KNOBS} == {f.name for f in dataclasses.fields(ReIDConfig)}


@pytest.mark.parametrize("k", KNOBS, ids=lambda k: k.name)
def test_each_reid_knob_is_a_node_parameter_and_a_cli_option_with_its_default(k):
    param = PARAMS_BY_NAME[f"reid.{k.name}"]
    assert param.default == k.default and type(param.default) is type(k.default)
    assert param.description == k.description and tuple(param.choices) == tuple(k.choices)
    assert (param.min_value, param.max_value) == (k.min_value, k.max_value)
    args = cli.build_parser().parse_args(["clip.mp4"])
    assert getattr(args, f"reid_{k.name}") == k.default
    option = next(a for a in cli.build_parser()._actions if a.dest == f"reid_{k.name}")
    assert option.help == k.description


def test_values_set_on_the_node_or_the_cli_reach_the_tracker_config():
    cfg = {name: p.default for name, p in PARAMS_BY_NAME.items()}
    cfg.update({"reid.enabled": True, "reid.source": "rgbd", "reid.max_voxels": 50, "reid.prompt": "box"})
    cfg.update({"tracker.max_objects": 3, "tracker.batch_objects": False})
    built = tracker_config(cfg)
    assert built.reid == "rgbd" and built.reid_config == ReIDConfig(max_voxels=50, prompt="box")
    assert (built.max_objects, built.batch_objects) == (3, False)
    assert check_value(PARAMS_BY_NAME["reid.prompt"], "mask") and check_value(PARAMS_BY_NAME["reid.depth_tol"], -1.0)
    args = cli.build_parser().parse_args(["clip.mp4", "--reid-max-voxels", "50", "--no-reid-prompt-as-conditioning"])
    assert cli.reid_config_from_args(args) == ReIDConfig(max_voxels=50, prompt_as_conditioning=False)
    args = cli.build_parser().parse_args(["clip.mp4", "--tiny", "--no-batch-objects", "--memory-policy", "dam4sam"])
    built, _ = cli.config_from_args(args)
    assert (built.batch_objects, built.memory_policy) == (False, "dam4sam")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["clip.mp4", "--reid-prompt", "mask"])


def test_training_uses_the_trackers_memory_cap_name_and_default():
    default = next(f.default for f in dataclasses.fields(TrackerConfig) if f.name == "must3r_max_keyframes")
    assert (
        DEFAULTS["model"]["must3r_max_keyframes"] == default == PARAMS_BY_NAME["tracker.must3r_max_keyframes"].default
    )
    assert "must3r_max_memory_images" not in DEFAULTS["model"]
    assert DEFAULTS["model"]["must3r"] == TrackerConfig().must3r == PARAMS_BY_NAME["model.must3r"].default
