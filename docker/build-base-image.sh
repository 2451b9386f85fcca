#!/usr/bin/env bash
# Build a Debian bookworm base image locally, for machines that cannot pull from a registry.
#
#   docker/build-base-image.sh [--force]
#
# debootstrap (minbase + python3, python3-venv, git, ca-certificates) into a temporary folder,
# then `tar | podman import` it as $BASE_IMAGE (default localhost/debian-bookworm-python:latest).
# Skips the work when the image already exists, unless --force. Needs root, debootstrap, podman
# and a Debian mirror (taken from the machine's apt sources, or $DEBIAN_MIRROR).
# Node is not in the base: docker/Dockerfile brings Node 20 itself.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=podman/env.sh
. "$here/podman/env.sh"

BASE_IMAGE="${BASE_IMAGE:-localhost/debian-bookworm-python:latest}"
SUITE="${SUITE:-bookworm}"
PACKAGES="${BASE_PACKAGES:-python3,python3-venv,git,ca-certificates}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ $force == 0 ]] && podman image exists "$BASE_IMAGE"; then
    echo "base image $BASE_IMAGE exists; nothing to do (--force rebuilds it)"
    exit 0
fi

# The mirror apt already uses here (the first "debian" URI that is not the security archive).
if [[ -z "${DEBIAN_MIRROR:-}" ]]; then
    DEBIAN_MIRROR="$(grep -hoE '(URIs:|^deb)\s+[^ ]*https?://[^ ]+/debian/?(\s|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)"
    DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
fi
DEBIAN_MIRROR="${DEBIAN_MIRROR%/}"
SECURITY_MIRROR="${SECURITY_MIRROR:-${DEBIAN_MIRROR}-security}"

rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/base-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $SUITE from $DEBIAN_MIRROR into $rootfs (packages: $PACKAGES)"
start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$DEBIAN_MIRROR"

# apt sources for later `apt-get install` in image builds, updates and security included.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# Like the official Debian images: no recommends, no cached package lists or debs.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$rootfs/etc/apt/apt.conf.d/90-no-recommends"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/* \
    "$rootfs"/var/log/*.log
# debootstrap copies the host's resolver and hostname; the container runtime provides its own.
: >"$rootfs/etc/resolv.conf"
echo localhost >"$rootfs/etc/hostname"

# mktemp made the folder 0700: it becomes the image's /, which every user must traverse.
chmod 755 "$rootfs"
tar --numeric-owner -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE $DEBIAN_MIRROR" \
    - "$BASE_IMAGE"
echo "built $BASE_IMAGE in $(( $(date +%s) - start )) s"
podman image ls "$BASE_IMAGE"
