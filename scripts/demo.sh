#!/usr/bin/env bash
# Quick start: set up the environment if needed, then track the objects of a generated clip with the offline CLI.
# Uses the official weights when they are in the weights folder (scripts: threeam-download-weights), otherwise
# random weights with a warning. Extra arguments go to threeam-track.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$repo/scripts/setup_env.sh" | tail -n 1)
exec "$venv/bin/threeam-track" --demo --output "${THREEAM_DEMO_OUT:-$repo/outputs/demo}" "$@"
