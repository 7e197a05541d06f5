#!/usr/bin/env bash
# A Debian base image with python3 + venv made from the apt mirror alone, for machines that
# reach no container registry: debootstrap a minbase root, trim it like debian:*-slim,
# `podman import` it. Prints the image name on stdout.
# Cached: the image carries a label with the hash of its inputs (this script, SUITE, INCLUDE,
# MIRROR); when an image of that name has the same label nothing is rebuilt.
#   SUITE=bookworm BASE_IMAGE=localhost/mediacdn-base:bookworm FORCE=1 scripts/container/base-image.sh
# Needs root, debootstrap and podman (apt-get install -y debootstrap podman).
set -euo pipefail

SUITE=${SUITE:-bookworm}
BASE_IMAGE=${BASE_IMAGE:-localhost/mediacdn-base:$SUITE}
MIRROR=${MIRROR:-}
INCLUDE=${INCLUDE:-python3,python3-venv,ca-certificates}
FORCE=${FORCE:-0}

inputs=$( { cat "$0"; echo "$SUITE|$INCLUDE|$MIRROR"; } | sha256sum | cut -c1-16)
have=$(podman image inspect --format '{{index .Labels "mediacdn.base.inputs"}}' "$BASE_IMAGE" \
  2>/dev/null || true)
if [ "$FORCE" != 1 ] && [ "$have" = "$inputs" ]; then
  echo "$BASE_IMAGE"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "base-image.sh: needs root (debootstrap)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "base-image.sh: apt-get install -y debootstrap" >&2; exit 2; }

work=$(mktemp -d)
root=$work/rootfs
cleanup() {
  # debootstrap unmounts on its own; be sure before deleting anything.
  for m in dev/pts dev proc sys; do
    if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

start=$(date +%s)
# shellcheck disable=SC2086  # MIRROR is optional and a single word
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" $MIRROR >&2

# Trim as the slim images do, and keep later apt installs trimmed too.
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
SLIM
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
# debootstrap leaves the downloaded .debs in the apt cache: the bulk of an untrimmed root.
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*.log \
  "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old

old=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
tar --numeric-owner -C "$root" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL mediacdn.base.inputs=$inputs" \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase --include=$INCLUDE $SUITE" \
  - "$BASE_IMAGE" >/dev/null
# The image it replaces would linger untagged (refused while an image still uses it).
if [ -n "$old" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
echo "base-image.sh: $BASE_IMAGE built in $(( $(date +%s) - start )) s" >&2
echo "$BASE_IMAGE"
