"""Training configuration: defaults (the paper's recipe; the model section has the tracker's defaults, so the paper's
model is in training/configs/3am_paper.yaml), YAML files in training/configs/, and `a.b=value` overrides.

Every key has a default here; a YAML file or an override may only set keys that exist (a typo is an error).
"""

from __future__ import annotations

import copy
import pathlib
import re

import yaml

from threeam_model.train.trainable import PAPER_LEARNING_RATES


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` (no dot) as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


# The model section is TrackerConfig's knobs that say which model is trained (threeam_model/knobs.py): the same
# names and defaults as the node's model.* parameters and threeam-track's options. The tracker's runtime knobs have
# training counterparts of their own (seed, train.device, train.amp_dtype); its caps and re-identification do not
# apply to training.
TRAINED_MODEL_KNOBS = (
    "method",
    "variant",
    "image_size",
    "must3r",
    "sam2_checkpoint",
    "must3r_checkpoint",
    "threeam_checkpoint",  # a 3AM checkpoint to start from (merger + heads)
    "tiny",
    "must3r_max_keyframes",  # MUSt3R memory cap while the features are made
)
# but one default: training trains the merger, so method is 3am (auto would fine-tune plain SAM 2 unless a 3AM
# checkpoint is given)
TRAINING_DEFAULTS = {"method": "3am"}


def _model_section() -> dict:
    from threeam_model.factory import TrackerConfig
    from threeam_model.knobs import knobs_of

    section = {k.name: k.default for k in knobs_of(TrackerConfig) if k.name in TRAINED_MODEL_KNOBS}
    return section | TRAINING_DEFAULTS


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


DEFAULTS: dict = {
    "seed": 0,
    "model": _model_section(),
    "data": {
        # list of {"type": synthetic | synthetic_dir | scannetpp | ase | mose, "weight": w, ...type options}
        "datasets": [
            {
                "type": "synthetic",
                "num_scenes": 8,
                "num_frames": 40,
                "width": 160,
                "height": 120,
                "num_objects": 4,
                "lookalike": True,
                "weight": 1.0,
            }
        ],
        "samples_per_epoch": 1000,
        "num_workers": 0,
    },
    "sampling": {
        "num_frames": 8,  # frames per clip (= SAM 2's memory size)
        "tau": 0.25,
        "fov_prob": {"scannetpp": 0.8, "ase": 0.8, "mose": 0.0, "synthetic": 0.8},
        "max_objects": 3,  # SAM 2.1's max_num_objects
        "max_candidates": None,
    },
    "prompting": {  # SAM 2.1 training schedule (see train/prompting.py)
        "prob_points": 0.5,
        "prob_box": 0.5,
        "num_init_cond_frames": 2,
        "num_frames_to_correct": 2,
        "num_correction_points": 7,
        "prob_correct_from_gt": 0.1,
        "add_corrected_as_cond": True,
    },
    "loss": {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0},
    "optim": {
        "lr": dict(PAPER_LEARNING_RATES),
        "schedule": "cosine",  # SAM 2: cosine from lr to lr / 10 over the run; or "constant"
        "weight_decay": 0.1,  # SAM 2: 0.1 on weights, 0 on biases and norms
        "grad_clip": 0.1,  # SAM 2: max L2 norm 0.1 (null: off)
    },
    "train": {
        "iterations": 1_000_000,  # paper: 1M at batch 1
        "out_dir": "runs/3am",
        "log_every": 10,
        "checkpoint_every": 1000,
        "keep_checkpoints": 3,
        "device": "auto",  # auto | cpu | cuda
        "amp_dtype": "float32",  # bfloat16 on GPUs that have it
        "progress": True,
    },
    "must3r": {"cache_dir": None, "cache_dtype": "float16"},  # None: <out_dir>/must3r_cache
}


def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base:
            raise KeyError(f"unknown config key {where!r}; known here: {sorted(base)}")
        if key == "fov_prob" and isinstance(value, dict):  # open set: any dataset type may get a probability
            out[key] = {**base[key], **value}
        elif isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """'optim.lr.merger=1e-3' -> {"optim": {"lr": {"merger": 0.001}}} (value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = _yaml(value)
    return node


def load_config(path=None, overrides: list[str] | None = None) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        data = _yaml(pathlib.Path(path).read_text()) or {}
        cfg = _merge(cfg, data)
    for text in overrides or []:
        cfg = _merge(cfg, parse_override(text))
    if int(cfg["train"]["iterations"]) < 1:
        raise ValueError("train.iterations must be >= 1")
    return cfg
