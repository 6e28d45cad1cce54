"""One name and one default per knob: every TrackerConfig field (and every re-identification threshold, ReIDConfig) is
declared once with its description and allowed values, and the node's parameters, threeam-track's options and the
training config's model section are derived from that declaration: the same name, the same default, and a value set
there reaches the tracker's config."""

import dataclasses
import json

import pytest

from threeam_model.cli import track as cli
from threeam_model.cli.options import knob_values
from threeam_model.factory import TrackerConfig
from threeam_model.knobs import knobs_of
from threeam_model.reid import ReIDConfig
from threeam_model.train.config import DEFAULTS, TRAINED_MODEL_KNOBS, TRAINING_DEFAULTS, load_config
from threeam_ros.params import PARAMS_BY_NAME, check_value, tracker_config

KNOBS = knobs_of(ReIDConfig)
TRACKER_KNOBS = knobs_of(TrackerConfig)
# the node spells these two differently, on purpose: it converts depth to metres by the image's encoding (so the
# scale stays 1), and reid is reid.enabled + reid.source, since reid.source's rgbd topics also feed objects3d
NODE_OWN_SPELLING = {"reid", "reid_depth_scale"}
# threeam-track's --must3r defaults to 224 for --demo (test_track_cli), 512 otherwise: the knob's default
CLI_OWN_DEFAULT = {"must3r"}
# TrackerConfig fields that are not about which model is trained: the trainer has its own seed, train.device and
# train.amp_dtype, and the tracker's caps, memory policy, runtime backend and re-identification play no part there
NOT_TRAINED = {
    "device",
    "dtype",
    "compile",
    "backend",
    "onnx_dir",
    "onnx_providers",
    "seed",
    "max_objects",
    "max_conditioning_frames",
    "batch_objects",
    "memory_policy",
    "memory_policy_args",
    "reid",
    "reid_depth_scale",
    "reid_config",
}


def node_defaults() -> dict:
    return {name: p.default for name, p in PARAMS_BY_NAME.items()}


def test_every_tracker_config_field_is_a_declared_knob():
    fields = {f.name for f in dataclasses.fields(TrackerConfig)}
    assert {k.name for k in TRACKER_KNOBS} == fields - {"reid_config"}  # reid_config: ReIDConfig's own knobs
    assert {k.name for k in KNOBS} == {f.name for f in dataclasses.fields(ReIDConfig)}
    assert {k.group for k in TRACKER_KNOBS} == {"model", "tracker", "reid"}
    assert all(k.description for k in TRACKER_KNOBS + KNOBS)


@pytest.mark.parametrize("k", [k for k in TRACKER_KNOBS if k.name not in NODE_OWN_SPELLING], ids=lambda k: k.name)
def test_each_tracker_knob_is_a_node_parameter_with_its_default(k):
    param = PARAMS_BY_NAME[f"{k.group}.{k.name}"]
    assert param.default == k.front_default and type(param.default) is type(k.front_default)
    assert k.from_front(param.default) == k.default
    assert param.description == k.description and tuple(param.choices) == tuple(k.choices)
    assert (param.min_value, param.max_value) == (k.min_value, k.max_value)
    assert getattr(tracker_config(node_defaults()), k.name) == getattr(TrackerConfig(), k.name)


@pytest.mark.parametrize("k", TRACKER_KNOBS, ids=lambda k: k.name)
def test_each_tracker_knob_is_a_threeam_track_option_with_its_default(k):
    args = cli.build_parser().parse_args(["clip.mp4"])
    option = next(a for a in cli.build_parser()._actions if a.dest == k.name)
    if k.name in CLI_OWN_DEFAULT:
        assert cli.config_from_args(args)[0].must3r == k.default
        return
    assert getattr(args, k.name) == k.front_default and option.help == k.description
    assert tuple(option.choices or ()) == tuple(k.choices)
    assert knob_values(args, TrackerConfig, only=(k.name,)) == {k.name: k.default}


@pytest.mark.parametrize("name", TRAINED_MODEL_KNOBS)
def test_the_training_config_model_section_is_the_trackers_knobs(name):
    k = next(k for k in TRACKER_KNOBS if k.name == name)
    assert DEFAULTS["model"][name] == TRAINING_DEFAULTS.get(name, k.default)
    assert {k.name for k in TRACKER_KNOBS} == set(TRAINED_MODEL_KNOBS) | (NOT_TRAINED - {"reid_config"})
    assert set(DEFAULTS["model"]) == set(TRAINED_MODEL_KNOBS)


def test_training_uses_the_trackers_memory_cap_name_and_default():
    default = next(f.default for f in dataclasses.fields(TrackerConfig) if f.name == "must3r_max_keyframes")
    assert (
        DEFAULTS["model"]["must3r_max_keyframes"] == default == PARAMS_BY_NAME["tracker.must3r_max_keyframes"].default
    )
    assert "must3r_max_memory_images" not in DEFAULTS["model"]
    assert DEFAULTS["model"]["must3r"] == TrackerConfig().must3r == PARAMS_BY_NAME["model.must3r"].default


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
    cfg = node_defaults()
    cfg.update({"reid.enabled": True, "reid.source": "rgbd", "reid.max_voxels": 50, "reid.prompt": "box"})
    cfg.update({"tracker.max_objects": 3, "tracker.batch_objects": False, "model.variant": "base_plus"})
    cfg.update({"model.image_size": 512, "model.onnx_providers": "cuda, cpu", "model.sam2_checkpoint": ""})
    cfg.update({"tracker.memory_policy": "dam4sam", "tracker.memory_policy_args": '{"ram_stride": 3}'})
    cfg.update({"model.threeam_checkpoint": "3am.pt"})
    built = tracker_config(cfg)
    assert built.reid == "rgbd" and built.reid_config == ReIDConfig(max_voxels=50, prompt="box")
    assert (built.max_objects, built.batch_objects, built.variant, built.image_size) == (3, False, "b+", 512)
    assert built.onnx_providers == ("cuda", "cpu") and built.sam2_checkpoint is None
    assert (built.memory_policy, built.memory_policy_args) == ("dam4sam", {"ram_stride": 3})
    assert (built.method, built.threeam_checkpoint) == ("3am", "3am.pt")  # method auto follows the checkpoint
    assert check_value(PARAMS_BY_NAME["reid.prompt"], "mask") and check_value(PARAMS_BY_NAME["reid.depth_tol"], -1.0)
    assert check_value(PARAMS_BY_NAME["model.variant"], "huge")
    args = cli.build_parser().parse_args(["clip.mp4", "--reid-max-voxels", "50", "--no-reid-prompt-as-conditioning"])
    assert cli.reid_config_from_args(args) == ReIDConfig(max_voxels=50, prompt_as_conditioning=False)
    argv = ["clip.mp4", "--tiny", "--no-batch-objects", "--memory-policy", "dam4sam"]
    argv += ["--memory-policy-args", json.dumps({"ram_stride": 3}), "--onnx-providers", "cuda,cpu"]
    built, _ = cli.config_from_args(cli.build_parser().parse_args(argv))
    assert (built.batch_objects, built.memory_policy, built.memory_policy_args) == (False, "dam4sam", {"ram_stride": 3})
    assert built.onnx_providers == ("cuda", "cpu")
    args = cli.build_parser().parse_args(["clip.mp4", "--checkpoint", "a.pt", "--onnx", "onnx/"])  # older spellings
    assert (args.threeam_checkpoint, args.onnx_dir) == ("a.pt", "onnx/")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["clip.mp4", "--reid-prompt", "mask"])


def test_a_malformed_mapping_is_refused_with_what_to_send():
    cfg = node_defaults()
    cfg["tracker.memory_policy_args"] = "ram_stride=3"
    with pytest.raises(ValueError, match="JSON object"):
        tracker_config(cfg)


def test_values_set_in_the_training_config_reach_its_tracker_config():
    cfg = load_config(None, ["model.variant=small", "model.must3r_max_keyframes=8", "model.method=sam2"])
    assert (cfg["model"]["variant"], cfg["model"]["must3r_max_keyframes"]) == ("small", 8)
    with pytest.raises(KeyError):
        load_config(None, ["model.init_checkpoint=x.pt"])  # the old name: now model.threeam_checkpoint
