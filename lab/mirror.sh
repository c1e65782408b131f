#!/usr/bin/env bash
# The lab's air-gapped image source: a registry (our own registry:2.8.3 image) on the
# host, seeded with locally built images under their Docker Hub names, one manifest
# list per tag for amd64 + arm64. Lab nodes use it through the docker_engine role's
# ordinary `docker_engine_registry_mirrors` setting, so the roles keep ordinary image
# names (`hashicorp/consul:1.8.7` pulls from here as it would from Docker Hub).
#
#   lab/mirror.sh            start the mirror (if needed) and seed it
#
# Nodes reach it as http://weather-lab-mirror:5000 on their Docker network (the node
# start tasks attach the mirror to each lab network); the host pushes via 127.0.0.1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SUITE=${LAB_SUITE:-trixie}
NAME=weather-lab-mirror
PORT=${LAB_MIRROR_PORT:-5000}
PUSH=127.0.0.1:$PORT

log() { printf '[lab-mirror %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Docker Hub path          local per-arch image (":<arch>" is appended)
SEEDS=(
  "hashicorp/consul:1.8.7             weather-lab/consul:1.8.7"
  "library/registry:2.8.3             weather-lab/registry:2.8.3"
  "library/registry:2                 weather-lab/registry:2.8.3"
  "library/busybox:1.37.0             weather-lab/busybox:1.37.0"
  "library/python:3.13-slim-trixie    weather-lab/python:3.13-slim-$SUITE"
)
ARCHES=(amd64 arm64)

start_mirror() {
  # A running mirror is kept unless its image was rebuilt (the data volume stays).
  if [ "$(docker inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ] \
     && [ "$(docker inspect -f '{{.Image}}' "$NAME")" = "$(docker image inspect -f '{{.Id}}' "weather-lab/registry:2.8.3-amd64")" ]; then
    return
  fi
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  log "starting $NAME (registry 2.8.3) on 127.0.0.1:$PORT"
  docker run -d --name "$NAME" --restart unless-stopped \
    --label owner=weather-lab-mirror \
    -p "127.0.0.1:$PORT:5000" -v weather-lab-mirror-data:/var/lib/registry \
    "weather-lab/registry:2.8.3-amd64" >/dev/null
  for _ in $(seq 1 30); do
    curl -fsS "http://$PUSH/v2/" >/dev/null 2>&1 && return
    sleep 1
  done
  log "the mirror did not answer on http://$PUSH/v2/"; docker logs --tail 20 "$NAME" >&2; exit 1
}

# Digest of the manifest list the mirror holds for a tag, or nothing.
remote_list_digest() {
  curl -fsS -o /dev/null -w '%header{docker-content-digest}' \
    -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
    "http://$PUSH/v2/${1%%:*}/manifests/${1##*:}" 2>/dev/null || true
}

seed() {
  local hub=$1 local_base=$2 refs=() changed=0
  for arch in "${ARCHES[@]}"; do
    local src="$local_base-$arch" dst="$PUSH/$hub-$arch"
    docker image inspect "$src" >/dev/null 2>&1 || { log "missing $src: run lab/build-images.sh seed"; exit 1; }
    local want; want=$(docker image inspect -f '{{.Id}}' "$src")
    # Push when the local image changed since the last push (the push tag still
    # names the old image) or the mirror lost the tag (e.g. its volume was removed).
    if [ "$(docker image inspect -f '{{.Id}}' "$dst" 2>/dev/null)" != "$want" ] \
       || [ -z "$(remote_list_digest "$hub")" ]; then
      docker tag "$src" "$dst"
      docker push -q "$dst" >/dev/null
      changed=1
    fi
    refs+=("$dst")
  done
  if [ "$changed" = 1 ]; then
    docker manifest rm "$PUSH/$hub" >/dev/null 2>&1 || true
    docker manifest create --insecure "$PUSH/$hub" "${refs[@]}" >/dev/null
    for arch in "${ARCHES[@]}"; do
      local variant=(); [ "$arch" = arm64 ] && variant=(--variant v8)
      docker manifest annotate --os linux --arch "$arch" "${variant[@]}" "$PUSH/$hub" "$PUSH/$hub-$arch"
    done
    docker manifest push --insecure --purge "$PUSH/$hub" >/dev/null
    log "seeded $hub (amd64 + arm64)"
  else
    log "$hub: up to date"
  fi
}

start_mirror
for line in "${SEEDS[@]}"; do
  # shellcheck disable=SC2086
  seed $line
done
log "mirror ready: nodes use http://$NAME:5000 (host: http://$PUSH)"
