#!/usr/bin/env bash
# Fill apps/.wheelhouse/<arch>/ with every wheel the app images need, using the HOST's pip
# (containers cannot reach PyPI here). apps/Dockerfile installs from it with
# `pip install --no-index --find-links`.
#
#   apps/build-wheelhouse.sh x86_64|aarch64      (amd64 / arm64 are accepted as aliases)
#
# * third-party dependencies and pip itself (the build stage runs pip from its wheel:
#   Debian's python3 has no pip): exactly the files of apps/requirements.lock, for
#   CPython 3.13 on manylinux (some, e.g. MarkupSafe and charset-normalizer, have
#   per-arch wheels). `pip download --require-hashes --no-deps`: nothing is resolved
#   here, and a file whose sha256 is not in the lock (changed or substituted on PyPI)
#   fails the build. apps/lock-wheelhouse.py writes the lock, on purpose;
# * our own packages: `pip wheel --no-deps`.
#
# Env: PYTHON (default python3) - the host interpreter whose pip is used.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
arch="${1:-}"
case "$arch" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "usage: $0 x86_64|aarch64" >&2; exit 2 ;;
esac
py="${PYTHON:-python3}"
out="$here/.wheelhouse/$arch"
lock="$here/requirements.lock"

rm -rf "$out"
mkdir -p "$out"
echo "[wheelhouse] third-party wheels of $lock for cp313 manylinux $arch -> $out" >&2
"$py" -m pip download --disable-pip-version-check -q \
  --require-hashes --no-deps -r "$lock" \
  --only-binary=:all: --implementation cp --python-version 3.13 \
  --platform "manylinux2014_$arch" --platform "manylinux_2_28_$arch" \
  -d "$out"

echo "[wheelhouse] our packages" >&2
pkgs=("$here/weather_common" "$here/weather_producer" "$here/fake_owm")
# The consumer (another team member's package) gets a wheel too when it is there.
[ -f "$here/weather_consumer/pyproject.toml" ] && pkgs+=("$here/weather_consumer")
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for p in "${pkgs[@]}"; do
  # build from a copy: no build/ or *.egg-info left in the source tree
  cp -r "$p" "$tmp/"
  "$py" -m pip wheel --disable-pip-version-check -q --no-deps -w "$out" "$tmp/$(basename "$p")"
done
ls -1 "$out" >&2
