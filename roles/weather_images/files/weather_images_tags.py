#!/usr/bin/env python3
"""Image tags and wheelhouse freshness for the weather_images role (runs on the controller).

    weather_images_tags.py --apps-dir DIR --base-image IMAGE \
        --app producer=weather_producer --app consumer=weather_consumer ... \
        --image producer:amd64 --image consumer:amd64 ... --wheel-arch x86_64 ...

Prints one JSON object:

    {"wheelhouse": {"x86_64": {"current": true, "sources": "<sha256>", "path": "...", "wheels": 20}},
     "images": [{"app": "producer", "arch": "amd64", "wheel_arch": "x86_64",
                 "version": "0.1.0", "hash": "<12 hex>", "tag": "0.1.0-<hash>-amd64"}],
     "lists": [{"app": "producer", "tag": "0.1.0-<hash>",
                "arches": {"amd64": "0.1.0-<hash>-amd64", "arm64": "0.1.0-<hash>-arm64"}}]}

An image's hash covers what ends up in it: the files of weather_common and of the app
(its package and pyproject.toml; not its tests), apps/Dockerfile and apps/requirements.lock
(the third-party wheels' versions and hashes; both shared by the three apps: a change to
either rebuilds them all), the names of the wheels in .wheelhouse/<arch>/ and the base
image. Same inputs, same tag: an unchanged app
is never rebuilt. Read-only: it changes nothing.

Each app also gets a multi-architecture tag (a manifest list over its images, one per
architecture): <version>-<hash of the per-architecture tags>, so it changes exactly when
one of them does. A node that pulls it gets the image of its own architecture.

A wheelhouse is current when it has wheels and its stamp (.weather-app-sources, written by
the role after apps/build-wheelhouse.sh) matches the hash of all our packages' sources and
of the lock: a new lock (apps/lock-wheelhouse.py) makes every wheelhouse stale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

STAMP = ".weather-app-sources"
DOCKERFILE = "Dockerfile"  # apps/Dockerfile: every app's image
LOCK = "requirements.lock"  # apps/requirements.lock: the third-party wheels of every image
COMMON = "weather_common"
ARCH_TO_WHEEL = {"amd64": "x86_64", "arm64": "aarch64"}
# Never in an image (tests, caches, build leftovers of editable installs).
SKIP_DIRS = {"tests", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist"}
SKIP_SUFFIXES = (".pyc", ".pyo")


def package_files(root: Path) -> list[Path]:
    """Files of one package directory that can reach an image, in a stable order."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or path.name.endswith(SKIP_SUFFIXES):
            continue
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        files.append(path)
    return files


def hash_files(digest: "hashlib._Hash", apps_dir: Path, files: list[Path]) -> None:
    for path in files:
        digest.update(path.relative_to(apps_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")


def project_version(pyproject: Path) -> str:
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # older controllers: the one line we need
        match = re.search(r'^\s*version\s*=\s*"([^"]+)"', text, re.M)
        if not match:
            sys.exit(f"no version in {pyproject}")
        return match.group(1)
    return str(tomllib.loads(text)["project"]["version"])


def wheel_names(wheelhouse: Path) -> list[str]:
    return sorted(p.name for p in wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps-dir", required=True, type=Path)
    parser.add_argument("--base-image", required=True)
    parser.add_argument("--app", action="append", default=[], help="key=directory")
    parser.add_argument("--image", action="append", default=[], help="key:arch (amd64|arm64)")
    parser.add_argument("--wheel-arch", action="append", default=[], help="x86_64|aarch64")
    args = parser.parse_args()

    apps_dir = args.apps_dir.resolve()
    apps = dict(item.split("=", 1) for item in args.app)
    for directory in [COMMON, *apps.values()]:
        if not (apps_dir / directory / "pyproject.toml").is_file():
            sys.exit(f"{apps_dir / directory} has no pyproject.toml: is weather_images_apps_dir right?")
    for name in (DOCKERFILE, LOCK):
        if not (apps_dir / name).is_file():
            sys.exit(f"{apps_dir / name} is missing: is weather_images_apps_dir right?")

    # Our packages' sources, as the wheels in every wheelhouse were built from them, and
    # the lock the third-party wheels were downloaded by.
    sources = hashlib.sha256()
    for directory in [COMMON, *sorted(apps.values())]:
        hash_files(sources, apps_dir, package_files(apps_dir / directory))
    hash_files(sources, apps_dir, [apps_dir / LOCK])
    sources_hash = sources.hexdigest()

    wheelhouse = {}
    for wheel_arch in sorted(set(args.wheel_arch)):
        path = apps_dir / ".wheelhouse" / wheel_arch
        stamp = path / STAMP
        names = wheel_names(path)
        current = (
            any(n.startswith("pip-") for n in names)
            and stamp.is_file()
            and stamp.read_text(encoding="utf-8").strip() == sources_hash
        )
        wheelhouse[wheel_arch] = {"current": current, "sources": sources_hash, "path": str(path),
                                   "wheels": len(names)}

    images = []
    for item in args.image:
        key, arch = item.split(":", 1)
        directory = apps[key]
        wheel_arch = ARCH_TO_WHEEL[arch]
        digest = hashlib.sha256()
        hash_files(digest, apps_dir, package_files(apps_dir / COMMON))
        hash_files(digest, apps_dir, package_files(apps_dir / directory))
        hash_files(digest, apps_dir, [apps_dir / DOCKERFILE, apps_dir / LOCK])
        digest.update(b"wheels:" + "\n".join(wheel_names(apps_dir / ".wheelhouse" / wheel_arch)).encode() + b"\n")
        digest.update(b"base:" + args.base_image.encode() + b"\n")
        short = digest.hexdigest()[:12]
        version = re.sub(r"[^A-Za-z0-9_.-]", "_", project_version(apps_dir / directory / "pyproject.toml"))
        images.append({
            "app": key,
            "arch": arch,
            "wheel_arch": wheel_arch,
            "version": version,
            "hash": short,
            "tag": f"{version}-{short}-{arch}",
        })

    lists = []
    for key in sorted(apps):
        arches = {image["arch"]: image["tag"] for image in images if image["app"] == key}
        if not arches:
            continue
        digest = hashlib.sha256("\n".join(f"{a}={t}" for a, t in sorted(arches.items())).encode())
        version = next(image["version"] for image in images if image["app"] == key)
        lists.append({"app": key, "tag": f"{version}-{digest.hexdigest()[:12]}", "arches": arches})
    json.dump({"wheelhouse": wheelhouse, "images": images, "lists": lists}, sys.stdout, indent=1,
              sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
