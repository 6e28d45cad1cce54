#!/usr/bin/env bash
# Quick start: set up the environment if needed, fetch SAM 2.1-tiny (156 MB, once) when the network allows, then
# track the objects of a generated clip with SAM 2 and geometric re-identification from the clip's exact depth and
# poses, and print the scores against its ground truth. Offline (or if the download fails) it says so and runs tiny
# random weights instead, with a loud warning: every stage runs, the masks mean nothing. Extra arguments go to
# threeam-track (e.g. --method 3am, --reid off).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$repo/scripts/setup_env.sh" | tail -n 1)
if ! "$venv/bin/threeam-download-weights" sam2.1_hiera_tiny; then
  echo "[demo] could not fetch SAM 2.1-tiny (offline?): the demo falls back to RANDOM weights" >&2
fi
exec "$venv/bin/threeam-track" --demo --method sam2 --reid rgbd --output "${THREEAM_DEMO_OUT:-$repo/outputs/demo}" "$@"
