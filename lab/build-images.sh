#!/usr/bin/env bash
# Build the lab's images from Debian's mirror (no registry is needed or reachable).
#
#   lab/build-images.sh [SET] [ARCH...]     SET: node | engine | seed | all (default all)
#                                           ARCH: amd64 arm64 (default both)
#
# Every image is cached by a hash of its recipe, stored as the image label
# org.weather-lab.recipe: a run whose hash matches prints "cached" and does nothing; a
# changed input rebuilds that image and those built on it, nothing else.
#
#   node:   weather-lab/rootfs:trixie-ARCH       mmdebstrap --variant=minbase (systemd, python3)
#           weather-lab/node:trixie-ARCH         + lab-only pieces (lab/images/node/): /proc/sys
#                                                remount unit, busybox rootfs, arm64 emulation shims
#   engine: weather-lab/node-engine:trixie-ARCH  + docker.io preinstalled (lab/images/node-engine/),
#                                                for the scenarios after docker_engine
#   seed:   what lab/mirror.sh serves to the nodes under Docker Hub names:
#           weather-lab/consul:1.8.7-ARCH        Debian 11's consul 1.8.7 (lab/images/consul/)
#           weather-lab/busybox:1.37.0-ARCH      Debian 13's busybox-static
#           weather-lab/registry:2.8.3-ARCH      Debian 13's docker-registry, on the busybox
#                                                image (lab/images/registry/)
#           weather-lab/python:3.13-slim-trixie-ARCH  Debian 13's python3.13 moved to /usr/local
#                                                (lab/images/python/): the apps' build stage
#   Each behaves like the Docker Hub image it stands in for (entry point, user, paths);
#   the Dockerfiles say how, and lab/tests/ proves it.
#
# arm64 mmdebstrap runs dpkg under qemu-user: about 2.5 minutes idle. Every
# image above the rootfs fetches its packages in an amd64 stage, so nothing else runs
# apt's dependency solver or list parsing under qemu.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
SUITE=${LAB_SUITE:-trixie}
MIRROR=${LAB_MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${LAB_CACHE_DIR:-$HOME/.cache/weather-lab}
# openssh-server and sudo: nodes are reached like machines (an admin user, SSH, sudo).
ROOTFS_INCLUDE=systemd,systemd-sysv,python3,python3-apt,iproute2,procps,ca-certificates,iputils-ping,openssh-server,sudo
export DOCKER_BUILDKIT=0   # the classic builder ships with the daemon; buildx is not installed

log() { printf '[lab-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Bump when the rootfs procedure below changes in a way its parameters do not show.
ROOTFS_RECIPE_REV=3   # 2: mmdebstrap instead of debootstrap; 3: no SSH host keys in the image

# Hash of everything that shapes an image: a change in any input rebuilds it.
recipe_hash() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

image_recipe() { docker image inspect -f '{{ index .Config.Labels "org.weather-lab.recipe" }}' "$1" 2>/dev/null || true; }

# Record the real architecture in the arm64 seed images (Docker 20.10 writes amd64).
# Only the images pushed to the mirror: the node images stay as built, so the host's
# 20.10 engine never meets an image whose platform differs from its own.
fix_arch() { [ "$2" = amd64 ] || python3 "$here/set-image-arch.py" "$1" "$2"; }

build_rootfs() {
  local arch=$1 image="weather-lab/rootfs:$SUITE-$1"
  local hash; hash=$(recipe_hash rootfs "$ROOTFS_RECIPE_REV" "$arch" "$SUITE" "$MIRROR" "$ROOTFS_INCLUDE")
  if [ "$(image_recipe "$image")" = "$hash" ]; then
    log "$image: cached (recipe $hash)"; return
  fi
  local dir="$CACHE_DIR/rootfs-$SUITE-$arch"
  rm -rf "$dir"
  log "$image: mmdebstrap $SUITE/$arch (amd64 ~20 s; arm64 runs dpkg under qemu, ~2.5 min)..."
  local start=$SECONDS
  # mmdebstrap, not debootstrap: it installs the whole set with one apt run, where
  # debootstrap's second stage calls dpkg package by package (arm64 under qemu,
  # measured idle: debootstrap 489 s, mmdebstrap 155-163 s).
  if ! mmdebstrap --variant=minbase --arch="$arch" --include="$ROOTFS_INCLUDE" \
        "$SUITE" "$dir" "$MIRROR" > "$CACHE_DIR/mmdebstrap-$arch.log" 2>&1; then
    log "mmdebstrap failed; last lines of $CACHE_DIR/mmdebstrap-$arch.log:"
    tail -20 "$CACHE_DIR/mmdebstrap-$arch.log" >&2; exit 1
  fi
  # Trim what a test node never reads; keep apt lists empty like an official image;
  # the host's name and resolver are not the node's (Docker provides both).
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
         "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
         "$dir"/etc/hostname "$dir"/etc/resolv.conf
  # Every node makes its own SSH host keys at its first boot, as Raspberry Pi OS does
  # (lab/images/node/files/lab-boot): keys baked into an image would be shared by all.
  rm -f "$dir"/etc/ssh/ssh_host_*
  log "$image: importing ($(( SECONDS - start )) s so far)"
  tar -C "$dir" -c . | docker import \
      --change "LABEL org.weather-lab.recipe=$hash" \
      --change "LABEL org.weather-lab.arch=$arch" \
      --change 'CMD ["/sbin/init"]' - "$image" >/dev/null
  rm -rf "$dir"
  log "$image: built in $(( SECONDS - start )) s"
}

# A Dockerfile stage on another lab image:
#   build_layer CONTEXT ARCH BASE_IMAGE TARGET_IMAGE [--build-arg K=V ...]
build_layer() {
  local name=$1 arch=$2 base=$3 image=$4; shift 4
  local ctx="$here/images/$name"
  local hash; hash=$(recipe_hash "$name" "$arch" "$(image_recipe "$base")" ${*:+"$*"} \
      "$(cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum)")
  if [ "$(image_recipe "$image")" = "$hash" ]; then
    log "$image: cached (recipe $hash)"; return
  fi
  log "$image: docker build (lab/images/$name/Dockerfile, ARCH=$arch)..."
  local start=$SECONDS
  if ! docker build -q --build-arg "BASE=$base" --build-arg "ARCH=$arch" "$@" \
        --label "org.weather-lab.recipe=$hash" --label "org.weather-lab.arch=$arch" \
        -t "$image" "$ctx" > "$CACHE_DIR/build-$name-$arch.log" 2>&1; then
    log "docker build failed; last lines of $CACHE_DIR/build-$name-$arch.log:"
    tail -30 "$CACHE_DIR/build-$name-$arch.log" >&2; exit 1
  fi
  log "$image: built in $(( SECONDS - start )) s"
}

# Every layer above the rootfs fetches its packages in a stage on the amd64 rootfs
# (apt under qemu parses its lists for minutes); the target stage only unpacks.
fetch_args() { printf '%s\n' --build-arg "FETCH_BASE=weather-lab/rootfs:$SUITE-amd64" --build-arg "DEB_ARCH=$1"; }

build_node() {
  local fetch; mapfile -t fetch < <(fetch_args "$1")
  build_rootfs "$1"
  build_layer node "$1" "weather-lab/rootfs:$SUITE-$1" "weather-lab/node:$SUITE-$1" "${fetch[@]}"
}

build_engine() {
  local fetch; mapfile -t fetch < <(fetch_args "$1")
  build_layer node-engine "$1" "weather-lab/node:$SUITE-$1" "weather-lab/node-engine:$SUITE-$1" "${fetch[@]}"
}

build_seed() {
  local arch=$1 fetch; mapfile -t fetch < <(fetch_args "$1")
  build_layer consul "$arch" "weather-lab/rootfs:$SUITE-$arch" "weather-lab/consul:1.8.7-$arch" "${fetch[@]}"
  fix_arch "weather-lab/consul:1.8.7-$arch" "$arch"
  # busybox: the static binary the node image already unpacked for its own tests.
  local bb="weather-lab/busybox:1.37.0-$arch" node="weather-lab/node:$SUITE-$arch"
  local hash; hash=$(recipe_hash busybox "$arch" "$(image_recipe "$node")")
  if [ "$(image_recipe "$bb")" = "$hash" ]; then
    log "$bb: cached (recipe $hash)"
  else
    docker run --rm --entrypoint tar "$node" -C /opt/lab/busybox-rootfs -c . \
      | docker import --change "LABEL org.weather-lab.recipe=$hash" --change 'CMD ["sh"]' - "$bb" >/dev/null
    fix_arch "$bb" "$arch"
    log "$bb: built"
  fi
  # registry: Alpine-like as Docker Hub's (busybox sh and wget, no Python).
  build_layer registry "$arch" "$bb" "weather-lab/registry:2.8.3-$arch" "${fetch[@]}"
  fix_arch "weather-lab/registry:2.8.3-$arch" "$arch"
  build_layer python "$arch" "weather-lab/rootfs:$SUITE-$arch" "weather-lab/python:3.13-slim-$SUITE-$arch"
  fix_arch "weather-lab/python:3.13-slim-$SUITE-$arch" "$arch"
}

main() {
  mkdir -p "$CACHE_DIR"
  local what=${1:-all}; shift || true
  local arches=("$@"); [ "${#arches[@]}" -gt 0 ] || arches=(amd64 arm64)
  # The fetch stages always run on the amd64 rootfs: build it first.
  build_rootfs amd64
  for a in "${arches[@]}"; do
    case "$what" in
      node) build_node "$a" ;;
      engine) build_node "$a"; build_engine "$a" ;;
      seed) build_node "$a"; build_seed "$a" ;;
      all) build_node "$a"; build_engine "$a"; build_seed "$a" ;;
      *) log "unknown image set: $what (node, engine, seed, all)"; exit 2 ;;
    esac
  done
  # The apps' image tests on this (amd64) host build FROM the Docker Hub name, as the
  # weather_app role does on the nodes (nothing is pulled: the local image is used).
  case "$what" in seed|all) docker tag "weather-lab/python:3.13-slim-$SUITE-amd64" "python:3.13-slim-$SUITE" ;; esac
}

main "$@"
