"""Where the official checkpoints come from and where they live on this machine.

Default folder: $THREEAM_WEIGHTS, else ~/.cache/threeam/weights. `threeam-download-weights [names]` fetches them
with urllib (no extra dependency); `find_weights(name)` returns the local path or says how to get it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import sys
import urllib.error
import urllib.request

_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_MUST3R_URL = "https://download.europe.naverlabs.com/ComputerVision/MUSt3R/"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    name: str
    filename: str
    url: str
    approx_bytes: int  # published size, used to catch truncated or wrong downloads (1% tolerance)
    description: str


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in [
        Checkpoint(
            "sam2.1_hiera_tiny",
            "sam2.1_hiera_tiny.pt",
            _SAM2_URL + "sam2.1_hiera_tiny.pt",
            156_008_466,
            "SAM 2.1 Hiera-T (38.9 M parameters)",
        ),
        Checkpoint(
            "sam2.1_hiera_small",
            "sam2.1_hiera_small.pt",
            _SAM2_URL + "sam2.1_hiera_small.pt",
            184_416_285,
            "SAM 2.1 Hiera-S (46 M parameters)",
        ),
        Checkpoint(
            "sam2.1_hiera_base_plus",
            "sam2.1_hiera_base_plus.pt",
            _SAM2_URL + "sam2.1_hiera_base_plus.pt",
            323_606_802,
            "SAM 2.1 Hiera-B+ (80.8 M parameters)",
        ),
        Checkpoint(
            "sam2.1_hiera_large",
            "sam2.1_hiera_large.pt",
            _SAM2_URL + "sam2.1_hiera_large.pt",
            898_083_611,
            "SAM 2.1 Hiera-L (224.4 M parameters)",
        ),
        Checkpoint(
            "MUSt3R_224_cvpr",
            "MUSt3R_224_cvpr.pth",
            _MUST3R_URL + "MUSt3R_224_cvpr.pth",
            1_693_926_903,
            "MUSt3R ViT-L/ViT-B, 224x224 (CVPR release)",
        ),
        Checkpoint(
            "MUSt3R_512_cvpr",
            "MUSt3R_512_cvpr.pth",
            _MUST3R_URL + "MUSt3R_512_cvpr.pth",
            1_693_926_903,
            "MUSt3R ViT-L/ViT-B, 512 wide (CVPR release)",
        ),
        Checkpoint(
            "MUSt3R_512",
            "MUSt3R_512.pth",
            _MUST3R_URL + "MUSt3R_512.pth",
            1_693_926_903,
            "MUSt3R ViT-L/ViT-B, 512 wide, fine-tuned from MUSt3R_512_cvpr (memory_mode kv)",
        ),
    ]
}


def weights_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("THREEAM_WEIGHTS") or pathlib.Path.home() / ".cache" / "threeam" / "weights")


def _entry(name: str) -> Checkpoint:
    key = name[:-3] if name.endswith(".pt") else name[:-4] if name.endswith(".pth") else name
    if key not in CHECKPOINTS:
        raise KeyError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[key]


def find_weights(name: str) -> pathlib.Path:
    """Local path of a registered checkpoint; FileNotFoundError with the download command if it is missing."""
    entry = _entry(name)
    path = weights_dir() / entry.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {entry.name} not found at {path}; run `threeam-download-weights {entry.name}` "
            f"(or put {entry.filename} from {entry.url} there, or set THREEAM_WEIGHTS to its folder)"
        )
    return path


def _size_ok(entry: Checkpoint, size: int) -> bool:
    return abs(size - entry.approx_bytes) <= 0.01 * entry.approx_bytes


def download(name: str, force: bool = False, timeout: float = 30.0) -> pathlib.Path:
    """Download one checkpoint into weights_dir() (atomically, via a .part file). Raises RuntimeError offline."""
    entry = _entry(name)
    folder = weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / entry.filename
    if path.is_file() and not force and _size_ok(entry, path.stat().st_size):
        return path
    part = path.with_suffix(path.suffix + ".part")
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 22):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r{entry.filename}: {done / 1e6:8.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
        print(file=sys.stderr)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"could not download {entry.url}: {exc} (offline? copy the file to {path} by hand)") from exc
    size = part.stat().st_size
    if not _size_ok(entry, size):
        part.unlink(missing_ok=True)
        raise RuntimeError(f"{entry.url} gave {size} bytes, expected about {entry.approx_bytes}; not kept")
    shutil.move(part, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="threeam-download-weights",
        description=f"Download official checkpoints into $THREEAM_WEIGHTS (now: {weights_dir()}).",
    )
    parser.add_argument("names", nargs="*", help=f"checkpoints to fetch (default: all): {', '.join(CHECKPOINTS)}")
    parser.add_argument("--force", action="store_true", help="download again even if the file is present")
    parser.add_argument("--list", action="store_true", help="list the checkpoints and whether they are present")
    args = parser.parse_args(argv)
    if args.list:
        for entry in CHECKPOINTS.values():
            present = (weights_dir() / entry.filename).is_file()
            print(
                f"{entry.name:24s} {entry.approx_bytes / 1e6:8.0f} MB  {'present' if present else 'missing':8s}"
                f"  {entry.description}"
            )
        return 0
    try:
        entries = [_entry(n) for n in args.names or list(CHECKPOINTS)]
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    failed = 0
    for entry in entries:
        try:
            print(f"{entry.name}: {download(entry.name, force=args.force)}")
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
