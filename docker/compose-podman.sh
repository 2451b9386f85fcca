#!/usr/bin/env bash
# Run docker/compose.yaml with podman-compose on a machine without a Docker engine.
#
#   docker/compose-podman.sh up [N]      # PostgreSQL, server, setup, then N workers (default 3)
#   docker/compose-podman.sh down [-v]   # stop and remove the containers (-v: and the volumes)
#   docker/compose-podman.sh ARGS...     # any other podman-compose command (ps, logs, ...)
#
# Uses the locally built images (docker/build-image.sh, docker/build-postgres-image.sh) and
# the project's podman configuration (docker/podman/). podman-compose comes from PyPI into
# $PODMAN_COMPOSE_VENV. Two podman 4.3 limits are worked around here, not in compose.yaml:
#  - without systemd, podman runs no healthchecks, so podman-compose ignores the
#    `condition: service_healthy` of depends_on: the server and setup commands wait for
#    their dependencies themselves (that part is in compose.yaml and harmless on Docker);
#  - a container created with --requires on a service that itself has dependencies fails to
#    start ("generating dependency graph ... not found in input list", podman-compose issue
#    #921): the workers are started with --no-deps once `setup` has exited successfully.
# The server's port on the host is $SERVER_PORT (default 4200).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=podman/env.sh
. "$here/podman/env.sh"
export IMAGE="${IMAGE:-localhost/prefect-parallel-agents:latest}"
export POSTGRES_IMAGE="${POSTGRES_IMAGE:-localhost/postgres-bookworm:15}"
export BASE="${BASE:-localhost/debian-bookworm-python:latest}"
venv="${PODMAN_COMPOSE_VENV:-/var/tmp/podman-compose-venv}"
project=prefect-parallel-agents

if [[ ! -x "$venv/bin/podman-compose" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "podman-compose==1.6.0"
fi
pc() { "$venv/bin/podman-compose" -f "$here/compose.yaml" "$@"; }

case "${1:-}" in
up)
    export WORKERS="${2:-${WORKERS:-3}}"
    podman image exists "$IMAGE" || "$here/build-image.sh"
    podman image exists "$POSTGRES_IMAGE" || "$here/build-postgres-image.sh"
    start=$(date +%s)
    pc up -d --no-build setup # and what it depends on: postgres, server
    echo "waiting for setup (work pool, queues, automation, deployments)..."
    code="$(podman wait "${project}_setup_1")"
    if [[ "$code" != 0 ]]; then
        podman logs --tail 30 "${project}_setup_1" >&2
        echo "setup exited with $code" >&2
        exit 1
    fi
    pc up -d --no-build --no-deps worker
    echo "up in $(($(date +%s) - start)) s: server http://127.0.0.1:${SERVER_PORT:-4200}, $WORKERS workers"
    podman ps --filter "label=io.podman.compose.project=$project" \
        --format '{{.Names}}  {{.Status}}'
    ;;
*)
    pc "$@"
    ;;
esac
