#!/usr/bin/env bash
# Run a command in a private network namespace with only loopback up, and ROS 2 discovery kept on this host.
# DDS discovery otherwise multicasts on every interface: no ROS process of this project runs without this.
#   bash scripts/isolated.sh python -m pytest test/
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: isolated.sh COMMAND [ARGS...]" >&2; exit 2; }
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}
if [ "${THREEAM_ISOLATED:-}" = 1 ]; then exec "$@"; fi
export THREEAM_ISOLATED=1
if [ "$(id -u)" = 0 ]; then
  exec unshare -n -- bash -c 'ip link set lo up && exec "$@"' isolated "$@"
fi
# Unprivileged: a user namespace grants the right to make the network namespace.
exec unshare -r -n -- bash -c 'ip link set lo up && exec "$@"' isolated "$@"
