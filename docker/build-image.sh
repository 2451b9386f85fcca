#!/usr/bin/env bash
# Build the worker image with podman from the locally made base image.
#
#   docker/build-image.sh [--ref GIT_REF] [extra podman build args...]
#
# Environment: IMAGE (default localhost/prefect-parallel-agents:latest), BASE_IMAGE (default
# localhost/debian-bookworm-python:latest; built by docker/build-base-image.sh when missing),
# NODE_VERSION / NPM_VERSION (Dockerfile defaults), EXTRA_CA_FILES (PEM files trusted in the
# image; default: the machine's /usr/local/share/ca-certificates/*.crt), PIP_INDEX_URL.
#
# The build context holds only the project's files: the working tree's tracked and untracked
# files that .gitignore does not exclude (no .venv, caches or reports), or with --ref the
# content of that commit (git archive). Builds with --network host so pip, npm and apt reach
# their registries the way this machine does.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=podman/env.sh
. "$here/podman/env.sh"

IMAGE="${IMAGE:-localhost/prefect-parallel-agents:latest}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-bookworm-python:latest}"
ref=""
if [[ "${1:-}" == "--ref" ]]; then
    ref="$2"
    shift 2
fi

if ! podman image exists "$BASE_IMAGE"; then
    BASE_IMAGE="$BASE_IMAGE" "$here/build-base-image.sh"
fi

# The CA certificates this machine adds to the system bundle (e.g. a TLS-intercepting egress
# proxy): without them pip and npm inside the container cannot verify their registries.
extra_ca=""
# shellcheck disable=SC2086
for f in ${EXTRA_CA_FILES-/usr/local/share/ca-certificates/*.crt}; do
    [[ -f "$f" ]] && extra_ca+="$(cat "$f")"$'\n'
done

# The package index this machine's pip uses, when it is an http(s) one (file:// indexes of the
# host are not visible inside the build).
pip_index="${PIP_INDEX_URL:-$(pip config get global.index-url 2>/dev/null || true)}"
[[ "$pip_index" =~ ^https?:// ]] || pip_index=""

context="$(mktemp -d "${TMPDIR:-/var/tmp}/image-context.XXXXXX")"
trap 'rm -rf "$context"' EXIT
if [[ -n "$ref" ]]; then
    git -C "$repo" archive --format=tar "$ref" | tar -x -C "$context"
    echo "context: git archive $ref ($(git -C "$repo" rev-parse --short "$ref"))"
else
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -I{} sh -c '[ -e "$1" ] && printf "%s\0" "$1" || true' _ {} \
        | tar --null -T - -c) | tar -x -C "$context"
    echo "context: working tree of $repo ($(git -C "$repo" rev-parse --short HEAD) plus local changes)"
fi

args=(--network host --build-arg "BASE=$BASE_IMAGE" --build-arg "EXTRA_CA_CERTS=$extra_ca")
[[ -n "$pip_index" ]] && args+=(--build-arg "PIP_INDEX_URL=$pip_index")
[[ -n "${NODE_VERSION:-}" ]] && args+=(--build-arg "NODE_VERSION=$NODE_VERSION")
[[ -n "${NPM_VERSION:-}" ]] && args+=(--build-arg "NPM_VERSION=$NPM_VERSION")

start=$(date +%s)
podman build "${args[@]}" -f "$here/Dockerfile" -t "$IMAGE" "$@" "$context"
echo "built $IMAGE from $BASE_IMAGE in $(( $(date +%s) - start )) s"
podman image ls "$IMAGE"
