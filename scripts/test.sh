#!/usr/bin/env bash
# The project's test command: sets up the environment if needed, then runs the whole suite network-isolated.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k must3r    # extra arguments go to pytest
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$repo/scripts/setup_env.sh" | tail -n 1)
# colcon lives in a venv of its own; made here because the tests run without network.
THREEAM_COLCON_VENV=$(bash "$repo/scripts/setup_env.sh" --colcon | tail -n 1)
export THREEAM_COLCON_VENV
cd "$repo"
exec bash "$repo/scripts/isolated.sh" "$venv/bin/python" -m pytest "$@"
