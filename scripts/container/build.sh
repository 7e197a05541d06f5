#!/usr/bin/env bash
# Builds mediacdn's image from the Containerfile at the repository root and prints its name.
#   scripts/container/build.sh                       base from base-image.sh (no registry needed)
#   BASE=docker.io/library/python:3.11-slim scripts/container/build.sh   a registry's base
# Steps: the base image; every wheel built on this host into a fresh context (pip's cache
# makes it quick); `buildah bud --isolation chroot`. Cached: the image is labelled with the
# hash of its inputs (base image id, Containerfile, this script, the sources and
# pyproject.toml); when IMAGE already has that label nothing is rebuilt.
# Knobs: IMAGE (default localhost/mediacdn:dev), BASE (default: base-image.sh's BASE_IMAGE),
# PYTHON (a CPython of the image's minor version, default .venv/bin/python else python3),
# FORCE=1.
# Needs root, buildah and podman (plus debootstrap without BASE).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-localhost/mediacdn:dev}
FORCE=${FORCE:-0}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SOURCES=(pyproject.toml README.md common config origin ingest transcode edge scripts)

log() { echo "build.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (buildah chroot isolation)"; exit 2; }
command -v buildah >/dev/null || { log "apt-get install -y buildah podman"; exit 2; }

BASE=${BASE:-$(scripts/container/base-image.sh)}
base_id=$(podman image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || echo "$BASE")
inputs=$( {
  echo "$base_id"
  cat Containerfile .containerignore "$0"
  find "${SOURCES[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
    | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
have=$(podman image inspect --format '{{index .Labels "mediacdn.inputs"}}' "$IMAGE" \
  2>/dev/null || true)
if [ "$FORCE" != 1 ] && [ "$have" = "$inputs" ]; then
  log "$IMAGE is up to date ($inputs)"
  echo "$IMAGE"
  exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { log "$PYTHON is not CPython 3.11, the image's Python: its wheels would not install"; exit 2; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
t0=$(date +%s)
# Build from a copy: pip would leave build/ and *.egg-info in the checkout.
mkdir "$ctx/src"
tar -c --exclude=__pycache__ --exclude='*.pyc' "${SOURCES[@]}" | tar -x -C "$ctx/src"
"$PYTHON" -m pip wheel -q --disable-pip-version-check -w "$ctx/image/wheels" "$ctx/src" >&2
cp Containerfile .containerignore "$ctx/image/"
t1=$(date +%s)
old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
buildah bud --isolation chroot --format docker --layers=false --quiet \
  --build-arg BASE="$BASE" --label "mediacdn.inputs=$inputs" -t "$IMAGE" "$ctx/image" >/dev/null
# The image it replaces would linger untagged, a few hundred MB per rebuild.
if [ -n "$old" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
log "$IMAGE built: wheels $((t1 - t0)) s, image $(( $(date +%s) - t1 )) s ($inputs)"
echo "$IMAGE"
