#!/usr/bin/env bash
# Prepare this machine to run the lab and the tests. Idempotent: every step checks
# first and does nothing when its work is already done, so `make test` can call it
# on every run.
#
#   - apt: docker.io, mmdebstrap (+ arch-test, for foreign architectures),
#     qemu-user-static (bookworm-backports: qemu >= 10 is needed for systemd in arm64
#     containers), consul 1.8.7 (bullseye, pinned low),
#     chromium + chromium-driver (browser tests of the weather page), wrk (benchmarks)
#   - a Docker daemon (started by hand when none answers: there is no systemd here)
#   - the qemu-aarch64 binfmt handler, re-registered so the kernel uses qemu >= 10
#
# Set SETUP_HOST_SKIP_APT=1 to skip the package step (e.g. on a machine you manage).
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root (apt, dockerd, binfmt_misc)"; exit 1; }

APT_OPTS=(-y -q -o DPkg::Lock::Timeout=900 -o Dpkg::Options::=--force-confold)
export DEBIAN_FRONTEND=noninteractive

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

setup_apt_sources() {
  local changed=0
  if [ ! -f /etc/apt/sources.list.d/weather-cluster-backports.list ]; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' \
      > /etc/apt/sources.list.d/weather-cluster-backports.list
    changed=1
  fi
  if [ ! -f /etc/apt/sources.list.d/weather-cluster-bullseye.list ]; then
    # Consul is not packaged in Debian 12/13; bullseye has 1.8.7 for amd64/arm64/armhf.
    echo 'deb http://deb.debian.org/debian bullseye main' \
      > /etc/apt/sources.list.d/weather-cluster-bullseye.list
    printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' \
      > /etc/apt/preferences.d/weather-cluster-bullseye
    changed=1
  fi
  if [ "$changed" = 1 ] || [ ! -f /var/lib/apt/periodic/weather-cluster-updated ]; then
    log "apt-get update"
    apt-get -q -o DPkg::Lock::Timeout=900 update >/dev/null
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/weather-cluster-updated
  fi
}

install_packages() {
  local missing=()
  for p in docker.io mmdebstrap arch-test chromium chromium-driver wrk curl openssh-client; do
    have_pkg "$p" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get install "${APT_OPTS[@]}" --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! have_pkg qemu-user-static || ! qemu-aarch64-static --version | grep -Eq 'version (9|[1-9][0-9])\.'; then
    log "installing qemu-user-static from bookworm-backports"
    apt-get install "${APT_OPTS[@]}" --no-install-recommends -t bookworm-backports qemu-user-static >/dev/null
  fi
  if ! have_pkg consul; then
    log "installing consul (1.8.7, from bullseye)"
    apt-get install "${APT_OPTS[@]}" --no-install-recommends consul/bullseye >/dev/null
  fi
}

start_docker() {
  if docker info >/dev/null 2>&1; then return; fi
  log "starting dockerd (log: /var/log/dockerd.log)"
  # setsid: the daemon must outlive the make/CI process group that started it.
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { log "dockerd is up"; return; }
    sleep 1
  done
  log "dockerd did not come up; last lines of /var/log/dockerd.log:"; tail -20 /var/log/dockerd.log >&2
  exit 1
}

register_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc
  [ -f "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir"
  local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -f "$conf" ] || { log "missing $conf (qemu-user-static not installed?)"; exit 1; }
  # Line format :name:type:offset:magic:mask:interpreter:flags. With flag F the kernel
  # opens the interpreter once, at registration: after a qemu upgrade it must be
  # registered again, so remember which binary (inode + mtime) we registered.
  #
  # Flag C (credentials from the emulated binary, not from qemu): without it a setuid
  # arm64 program runs with the caller's uid, and `sudo` on an emulated Pi says
  # "effective uid is not 0". The lab's Pis are reached as a sudo user, like real ones.
  local interp stamp line marker=/run/weather-cluster-binfmt
  interp=$(awk -F: '{print $7}' "$conf")
  line=$(head -n 1 "$conf")
  case "${line##*:}" in *C*) ;; *) line="${line}C" ;; esac
  stamp="$(stat -L -c '%i %Y' "$interp") $(stat -L -c '%i %Y' /usr/bin/qemu-aarch64-static) ${line##*:}"
  if [ -f "$dir/qemu-aarch64" ] && [ "$(cat "$marker" 2>/dev/null)" = "$stamp" ] \
     && grep -q '^flags: .*C' "$dir/qemu-aarch64"; then
    return
  fi
  log "registering qemu-aarch64 binfmt handler ($interp, flags ${line##*:})"
  if [ -f "$dir/qemu-aarch64" ]; then echo -1 > "$dir/qemu-aarch64"; fi
  printf '%s\n' "$line" > "$dir/register"
  echo "$stamp" > "$marker"
}

if [ "${SETUP_HOST_SKIP_APT:-0}" != 1 ]; then
  setup_apt_sources
  install_packages
fi
start_docker
register_binfmt
log "host ready: $(docker version -f 'engine {{.Server.Version}}'), $(qemu-aarch64-static --version | head -1), consul $(consul version | head -1 | awk '{print $2}')"
