#!/usr/bin/env bash
# Build the PostgreSQL stand-in image (docker/postgres/) from the locally made base image, for
# running docker/compose.yaml on a machine that cannot pull docker.io/library/postgres.
#   docker/build-postgres-image.sh      # -> $POSTGRES_IMAGE (localhost/postgres-bookworm:15)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=podman/env.sh
. "$here/podman/env.sh"
POSTGRES_IMAGE="${POSTGRES_IMAGE:-localhost/postgres-bookworm:15}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-bookworm-python:latest}"
podman image exists "$BASE_IMAGE" || BASE_IMAGE="$BASE_IMAGE" "$here/build-base-image.sh"
start=$(date +%s)
podman build --network host --build-arg "BASE=$BASE_IMAGE" -t "$POSTGRES_IMAGE" "$here/postgres"
echo "built $POSTGRES_IMAGE in $(( $(date +%s) - start )) s"
