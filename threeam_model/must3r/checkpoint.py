"""Official MUSt3R checkpoints: parse the recorded constructor strings (never eval), rebuild, load strictly.

An official file is a dict {'args': argparse.Namespace(encoder='Dust3rEncoder(...)', decoder='CausalMUSt3R(...)',
...), 'encoder': state_dict, 'decoder': state_dict, 'epoch': int} (training checkpoints add 'optimizer', 'scaler').
"""

from __future__ import annotations

import argparse
import ast
import os
import pickle
import re

import torch

from ..errors import CheckpointError
from .model import Must3rModel, build_must3r

ENCODER_CLASSES = ("Dust3rEncoder",)
DECODER_CLASSES = ("MUSt3R", "CausalMUSt3R")
ENCODER_KEYS = {"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_embed", "pos_embed"}
DECODER_KEYS = {
    "img_size",
    "enc_embed_dim",
    "patch_size",
    "embed_dim",
    "output_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "pos_embed",
    "feedback_type",
    "memory_mode",
}
# Accepted and without effect at inference: training-only options of CausalMUSt3R, and options whose only
# supported value is the default (checked in _check_fixed).
IGNORED_DECODER_KEYS = {"protected_imgs", "mem_dropout", "dropout_mode", "use_xformers_mask", "use_mem_mask"}
FIXED_DECODER_KEYS = {
    "landscape_only": None,  # load_model always forces False, which is what this decoder does
    "head": "Linear",
    "pointmaps_activation": "norm_exp",
    "block_type": "CachedDecoderBlock",
}
FIXED_ENCODER_KEYS = {"patch_embed": "PatchEmbedDust3R"}


def _literal(node: ast.AST, text: str):
    """A keyword value: a Python literal, or one of the few names the official strings use."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ActivationType":
        return node.attr.lower()  # ActivationType.NORM_EXP -> 'norm_exp'
    if isinstance(node, ast.Name) and node.id in ("CachedDecoderBlock",):
        return node.id
    try:
        return ast.literal_eval(node)
    except ValueError as e:
        raise CheckpointError(f"unsupported value {ast.unparse(node)!r} in {text!r}: only literals are allowed") from e


def parse_constructor(text: str) -> tuple[str, dict]:
    """'Name(a=1,b=(2,3),c="x")' -> ('Name', {'a': 1, 'b': (2, 3), 'c': 'x'}), parsed without executing it."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise CheckpointError(f"cannot parse model args {text!r}: {e.msg}") from e
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name):
        raise CheckpointError(f"model args {text!r} are not of the form Name(key=value, ...)")
    if tree.args:
        raise CheckpointError(f"model args {text!r} have positional arguments; only key=value is supported")
    kwargs = {}
    for kw in tree.keywords:
        if kw.arg is None:
            raise CheckpointError(f"model args {text!r} use **kwargs, which cannot be parsed")
        kwargs[kw.arg] = _literal(kw.value, text)
    return tree.func.id, kwargs


def _check_fixed(kwargs: dict, fixed: dict, text: str) -> None:
    for key, value in fixed.items():
        if key in kwargs and value is not None and kwargs[key] != value:
            raise CheckpointError(f"{key}={kwargs[key]!r} in {text!r} is not supported (only {value!r})")


def encoder_kwargs(text: str) -> dict:
    name, kw = parse_constructor(text)
    if name not in ENCODER_CLASSES:
        raise CheckpointError(f"unknown encoder class {name!r} in {text!r}; expected one of {ENCODER_CLASSES}")
    unknown = set(kw) - ENCODER_KEYS
    if unknown:
        raise CheckpointError(f"unknown encoder argument(s) {sorted(unknown)} in {text!r}")
    _check_fixed(kw, FIXED_ENCODER_KEYS, text)
    kw.pop("patch_embed", None)
    return kw


def decoder_kwargs(text: str) -> dict:
    name, kw = parse_constructor(text)
    if name not in DECODER_CLASSES:
        raise CheckpointError(f"unknown decoder class {name!r} in {text!r}; expected one of {DECODER_CLASSES}")
    unknown = set(kw) - DECODER_KEYS - IGNORED_DECODER_KEYS - set(FIXED_DECODER_KEYS)
    if unknown:
        raise CheckpointError(f"unknown decoder argument(s) {sorted(unknown)} in {text!r}")
    _check_fixed(kw, FIXED_DECODER_KEYS, text)
    return {k: v for k, v in kw.items() if k in DECODER_KEYS}


def with_image_size(kwargs: dict, img_size: int | None) -> dict:
    """Run a checkpoint at another square size: adapt RoPE frequencies as the official load_model does.

    A model trained at S (or with 'RoPE<f>_<S>:<T>') run at size I uses 'RoPE<f>_<S>:<I>' (frequencies * S/I).
    """
    if img_size is None:
        return kwargs
    kwargs = dict(kwargs)
    h, w = kwargs.get("img_size", (224, 224))
    if h != w:
        raise CheckpointError(f"img_size override needs a square training size, got {(h, w)}")
    pe = kwargs.get("pos_embed", "RoPE100")
    m = re.fullmatch(r"([A-Za-z]+)(\d+)(?:_(\d+):(\d+))?", pe)
    if not m:
        raise CheckpointError(f"cannot adapt pos_embed {pe!r} to img_size {img_size}")
    prefix, freq, base, new = m.groups()
    base = int(base) if base else h
    new = int(new) if new else h
    kwargs["img_size"] = (img_size, img_size)
    if img_size != new:
        kwargs["pos_embed"] = f"{prefix}{freq}_{base}:{img_size}"
    return kwargs


def _read(path) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"MUSt3R checkpoint not found: {path}")
    try:
        # weights_only keeps pickle from running code; the official files hold an argparse.Namespace
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read MUSt3R checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]} "
            "(truncated download or not a torch checkpoint?)"
        ) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a MUSt3R checkpoint dict")
    missing = [k for k in ("args", "encoder", "decoder") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a MUSt3R checkpoint: top-level key(s) {missing} missing")
    return ckpt


def _args_strings(args, path) -> tuple[str, str]:
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    enc, dec = get("encoder", None), get("decoder", None)
    if not isinstance(enc, str) or not isinstance(dec, str):
        raise CheckpointError(f"{path}: args.encoder / args.decoder must be constructor strings, got {enc!r}, {dec!r}")
    return enc, dec


def _list(keys, limit=12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(module: torch.nn.Module, state: dict, what: str) -> None:
    """Strict key and shape check with a message naming the missing, unexpected and mismatched keys."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} state_dict is a {type(state).__name__}, not a dict")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) if torch.is_tensor(v) else None for k, v in state.items()}
    problems = []
    if missing := expected.keys() - got.keys():
        problems.append(f"missing keys ({len(missing)}): {_list(missing)}")
    if unexpected := got.keys() - expected.keys():
        problems.append(f"unexpected keys ({len(unexpected)}): {_list(unexpected)}")
    bad = [f"{k} {got[k]} != {expected[k]}" for k in sorted(expected.keys() & got.keys()) if got[k] != expected[k]]
    if bad:
        problems.append(f"shape mismatch ({len(bad)}): {_list(bad)}")
    if problems:
        summary = "; ".join(problems)
        raise CheckpointError(f"{what} weights do not match the model built from the checkpoint args: {summary}")


def _float32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_must3r(path, device="cpu", img_size: int | None = None, memory_mode: str | None = None) -> Must3rModel:
    """Load an official MUSt3R .pth (or one written by ``save_must3r``) in eval mode on ``device``.

    ``img_size``: run a 512 checkpoint at another size (RoPE frequencies adapted as the official load_model does).
    ``memory_mode``: override the cache layout ('kv' fastest, 'norm_y', 'raw'); outputs are the same.
    """
    ckpt = _read(path)
    enc_text, dec_text = _args_strings(ckpt["args"], path)
    enc_kw = with_image_size(encoder_kwargs(enc_text), img_size)
    dec_kw = with_image_size(decoder_kwargs(dec_text), img_size)
    if memory_mode is not None:
        dec_kw["memory_mode"] = memory_mode
    with torch.device("meta"):
        model = build_must3r(enc_kw, dec_kw)
    check_state_dict(model.encoder, ckpt["encoder"], f"{path}: encoder")
    check_state_dict(model.decoder, ckpt["decoder"], f"{path}: decoder")
    model.encoder.load_state_dict(_float32(ckpt["encoder"]), strict=True, assign=True)
    model.decoder.load_state_dict(_float32(ckpt["decoder"]), strict=True, assign=True)
    model.encoder.rope._cache.clear()
    return model.to(device).eval()


def constructor_string(name: str, kwargs: dict) -> str:
    return f"{name}(" + ",".join(f"{k}={v!r}".replace(" ", "") for k, v in kwargs.items()) + ")"


def save_must3r(model: Must3rModel, path, epoch: int = 0) -> None:
    """Write a checkpoint in the official layout (args Namespace with constructor strings, two state_dicts)."""
    args = argparse.Namespace(
        encoder=constructor_string("Dust3rEncoder", model.encoder_args),
        decoder=constructor_string("MUSt3R", model.decoder_args),
    )
    torch.save(
        {"encoder": model.encoder.state_dict(), "decoder": model.decoder.state_dict(), "args": args, "epoch": epoch},
        path,
    )
