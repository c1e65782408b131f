#!/usr/bin/env bash
# Build the lab's images from Debian's mirror (no registry is needed or reachable).
#
#   lab/build-images.sh [node] [ARCH...]     # default: node amd64 arm64
#
# Two stages per architecture, each cached by a hash of its recipe: a rebuilt image is
# only made when the recipe (this script, the package list, the files under
# lab/images/<name>/) changed. The hash is stored as the image label
# org.weather-lab.recipe and compared on every run.
#
#   1. weather-lab/rootfs:trixie-ARCH  debootstrap --variant=minbase (systemd, python3)
#   2. weather-lab/node:trixie-ARCH    + lab-only pieces (lab/images/node/Dockerfile):
#      /proc/sys remount unit, quieter systemd, and on arm64 the emulation shims.
#
# The arm64 stages run under qemu-user: expect about 5 minutes for the rootfs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
SUITE=${LAB_SUITE:-trixie}
MIRROR=${LAB_MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${LAB_CACHE_DIR:-$HOME/.cache/weather-lab}
ROOTFS_INCLUDE=systemd,systemd-sysv,python3,python3-apt,iproute2,procps,ca-certificates,iputils-ping
export DOCKER_BUILDKIT=0   # the classic builder ships with the daemon; buildx is not installed

log() { printf '[lab-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Bump when the rootfs procedure below changes in a way its parameters do not show.
ROOTFS_RECIPE_REV=1

# Hash of everything that shapes an image: a change in any input rebuilds it.
recipe_hash() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

image_recipe() { docker image inspect -f '{{ index .Config.Labels "org.weather-lab.recipe" }}' "$1" 2>/dev/null || true; }

build_rootfs() {
  local arch=$1 image="weather-lab/rootfs:$SUITE-$1"
  local hash; hash=$(recipe_hash rootfs "$ROOTFS_RECIPE_REV" "$arch" "$SUITE" "$MIRROR" "$ROOTFS_INCLUDE")
  if [ "$(image_recipe "$image")" = "$hash" ]; then
    log "$image: cached (recipe $hash)"; return
  fi
  local dir="$CACHE_DIR/rootfs-$SUITE-$arch" debs="$CACHE_DIR/debs-$SUITE-$arch"
  rm -rf "$dir"; mkdir -p "$dir" "$debs"
  log "$image: debootstrap $SUITE/$arch (amd64 ~1 min; arm64 runs under qemu, ~5 min)..."
  local start=$SECONDS
  if ! debootstrap --variant=minbase --arch="$arch" --include="$ROOTFS_INCLUDE" \
        --cache-dir="$debs" "$SUITE" "$dir" "$MIRROR" > "$CACHE_DIR/debootstrap-$arch.log" 2>&1; then
    log "debootstrap failed; last lines of $CACHE_DIR/debootstrap-$arch.log:"
    tail -20 "$CACHE_DIR/debootstrap-$arch.log" >&2; exit 1
  fi
  # Trim what a test node never reads; keep apt lists empty like an official image.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
         "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
  log "$image: importing ($(( SECONDS - start )) s so far)"
  tar -C "$dir" -c . | docker import \
      --change "LABEL org.weather-lab.recipe=$hash" \
      --change "LABEL org.weather-lab.arch=$arch" \
      --change 'CMD ["/sbin/init"]' - "$image" >/dev/null
  rm -rf "$dir"
  log "$image: built in $(( SECONDS - start )) s"
}

build_node() {
  local arch=$1 image="weather-lab/node:$SUITE-$1" base="weather-lab/rootfs:$SUITE-$1"
  local ctx="$here/images/node"
  local hash; hash=$(recipe_hash node "$arch" "$(image_recipe "$base")" \
      "$(cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum)")
  if [ "$(image_recipe "$image")" = "$hash" ]; then
    log "$image: cached (recipe $hash)"; return
  fi
  log "$image: docker build (lab/images/node/Dockerfile, ARCH=$arch)..."
  local start=$SECONDS
  if ! docker build -q --build-arg "BASE=$base" --build-arg "ARCH=$arch" \
        --label "org.weather-lab.recipe=$hash" --label "org.weather-lab.arch=$arch" \
        -t "$image" "$ctx" > "$CACHE_DIR/build-node-$arch.log" 2>&1; then
    log "docker build failed; last lines of $CACHE_DIR/build-node-$arch.log:"
    tail -30 "$CACHE_DIR/build-node-$arch.log" >&2; exit 1
  fi
  log "$image: built in $(( SECONDS - start )) s"
}

main() {
  mkdir -p "$CACHE_DIR"
  local what=${1:-node}; shift || true
  local arches=("$@"); [ "${#arches[@]}" -gt 0 ] || arches=(amd64 arm64)
  case "$what" in
    node)
      for a in "${arches[@]}"; do build_rootfs "$a"; build_node "$a"; done ;;
    *) log "unknown image set: $what"; exit 2 ;;
  esac
}

main "$@"
