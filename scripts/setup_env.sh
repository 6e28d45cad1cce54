#!/usr/bin/env bash
# One-command, idempotent environment for threeam on a machine without a system ROS 2.
# The venv lives outside the clone, keyed by the hash of the lock files, so a second run is a no-op
# and a changed pin gives a fresh venv. The interfaces package is rebuilt when its sources change.
#   bash scripts/setup_env.sh            # install if needed; prints the venv path on the last line
#   bash scripts/setup_env.sh --path     # print the venv path only (no install)
#   bash scripts/setup_env.sh --colcon   # also a separate colcon venv (for test/ros/test_colcon_build.py); prints its path
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${THREEAM_CACHE:-$HOME/.cache/threeam}
py=${THREEAM_PYTHON:-python3}

lock_hash=$(cat "$repo"/requirements/*.txt "$repo/scripts/fix_ros_cmake_paths.py" | sha256sum | cut -c1-16)
gpu=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=cuda; fi
venv="$cache/venv-$gpu-$lock_hash"
colcon_venv="$cache/colcon-$(sha256sum "$repo/requirements/colcon/colcon.txt" | cut -c1-16)"
if [ "${1:-}" = "--path" ]; then echo "$venv"; exit 0; fi

log() { echo "[setup_env] $*" >&2; }
mkdir -p "$cache"
exec 9>"$cache/.lock"; flock 9   # two concurrent installs must not share a half-built venv

if [ ! -f "$venv/.complete" ]; then
  log "creating $venv"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --upgrade "pip==25.3" "setuptools==80.9.0" "wheel==0.45.1"
  if [ "$gpu" = cuda ]; then
    # A GPU host takes the CUDA build of the same torch release from the PyTorch index.
    "${pip[@]}" -r "$repo/requirements/torch.txt" --index-url https://download.pytorch.org/whl/cu128 \
      || "${pip[@]}" -r "$repo/requirements/torch.txt"
  else
    "${pip[@]}" -r "$repo/requirements/torch.txt"
  fi
  "${pip[@]}" -r "$repo/requirements/python.txt"
  # sam2 after torch, without its declared deps (they would pull a CUDA torch) and without building its CUDA op.
  SAM2_BUILD_CUDA=0 "${pip[@]}" --no-deps --no-build-isolation -r "$repo/requirements/sam2.txt"
  "${pip[@]}" -r "$repo/requirements/ros.txt"
  "$venv/bin/python" "$repo/scripts/fix_ros_cmake_paths.py" "$venv"
  touch "$venv/.complete"
  log "venv ready"
fi

if [ "${1:-}" = "--colcon" ]; then
  if [ ! -f "$colcon_venv/.complete" ]; then
    log "creating $colcon_venv"
    rm -rf "$colcon_venv"
    "$py" -m venv "$colcon_venv"
    "$colcon_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$repo/requirements/colcon/colcon.txt"
    touch "$colcon_venv/.complete"
  fi
  echo "$colcon_venv"
  exit 0
fi

# Optional extras (requirements/extras/: ONNX export and runtime), keyed by their own hash.
extras_hash=$(cat "$repo"/requirements/extras/*.txt | sha256sum | cut -c1-16)
if [ ! -f "$venv/.extras-$extras_hash" ]; then
  log "installing the optional extras (requirements/extras)"
  for req in "$repo"/requirements/extras/*.txt; do
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  done
  rm -f "$venv"/.extras-*
  touch "$venv/.extras-$extras_hash"
fi

# An ament_cmake interfaces package, built with the venv's rosidl generators and installed into the venv prefix.
#   build_interfaces SOURCE_DIR BUILD_NAME
build_interfaces() {
  local build="$cache/build-$2-$gpu-$lock_hash"
  log "building $(basename "$1")"
  rm -rf "$build"
  (
    export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
    cmake -S "$1" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
      -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$build.log" 2>&1 \
    && cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 \
    && cmake --install "$build" >>"$build.log" 2>&1
  ) || { tail -50 "$build.log" >&2; log "$(basename "$1") build failed (full log: $build.log)"; exit 1; }
}
iface_hash=$(find "$repo/threeam_interfaces" -type f | sort | xargs cat | sha256sum | cut -c1-16)
if [ ! -f "$venv/.interfaces-$iface_hash" ]; then
  build_interfaces "$repo/threeam_interfaces" interfaces
  rm -f "$venv"/.interfaces-*
  touch "$venv/.interfaces-$iface_hash"
fi
# vision_msgs: the PyPI stack has none, so compat/vision_msgs (same definitions as vision_msgs 4.1.1) is built, but
# only while no vision_msgs from outside the venv (a system install) is importable; that one wins.
vm_hash=$(find "$repo/compat/vision_msgs" -type f | sort | xargs cat | sha256sum | cut -c1-16)
if [ ! -f "$venv/.vision-msgs-$vm_hash" ]; then
  vm_where=$(cd / && "$venv/bin/python" -c 'import importlib.util as u; s = u.find_spec("vision_msgs")
print(*(s.submodule_search_locations or [s.origin]) if s else "", sep="\n")' 2>/dev/null || true)
  if [ -z "$vm_where" ] || ! grep -qv "^$venv/" <<<"$vm_where"; then
    build_interfaces "$repo/compat/vision_msgs" vision-msgs
    rm -f "$venv"/.vision-msgs-*
    touch "$venv/.vision-msgs-$vm_hash"
  fi
fi
# The package itself, editable, so console scripts point at this clone.
if [ "$(cat "$venv/.editable-src" 2>/dev/null)" != "$repo" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$repo"
  echo "$repo" >"$venv/.editable-src"
fi
echo "$venv"
