# Source this file (`. docker/podman/env.sh`) to use the project's podman configuration
# instead of the machine's: vfs storage, no default ulimits, cgroupfs. Nothing global changes.
_podman_conf_dir="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$_podman_conf_dir/containers.conf}"
export CONTAINERS_STORAGE_CONF="${CONTAINERS_STORAGE_CONF:-$_podman_conf_dir/storage.conf}"
unset _podman_conf_dir
