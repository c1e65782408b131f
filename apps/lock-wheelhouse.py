#!/usr/bin/env python3
"""Write apps/requirements.lock: every third-party wheel of the app images, pinned by hash.

    python3 apps/lock-wheelhouse.py            # resolve on PyPI now and rewrite the lock
    python3 apps/lock-wheelhouse.py --check    # the same, but only say whether it would change

Run it on purpose, on a machine that reaches PyPI, and commit the lock on its own with
the diff reviewed: to take new versions (a security fix), or after a change to the
dependencies in an app's pyproject.toml (apps/tests/test_requirements_lock.py fails
until the lock satisfies them again). Nothing else resolves versions: apps/build-wheelhouse.sh
downloads exactly the lock's files (`pip download --require-hashes`), apps/Dockerfile
installs exactly them, and a new lock makes roles/weather_images rebuild the wheelhouse
and give every image a new tag.

What is locked: the dependencies of our packages (apps/*/pyproject.toml, ours left out:
they are built locally) and pip (the image build runs pip from its wheel), resolved to
the newest versions their ranges allow, transitive ones included. The wheels are those
build-wheelhouse.sh uses: CPython 3.13 on manylinux, x86_64 and aarch64. x86_64 is
resolved first, aarch64 is then held to the same versions, so one lock (one version per
distribution, the hash of each architecture's file) serves both. Names and versions come
from the downloaded wheels' file names, the hashes from their bytes.

Uses the pip of the Python that runs it (any Python >= 3.11: tomllib).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

APPS = Path(__file__).resolve().parent
LOCK = APPS / "requirements.lock"
# As apps/build-wheelhouse.sh: the images' Python and platforms.
PYTHON_VERSION = "3.13"
ARCHES = ("x86_64", "aarch64")
PLATFORMS = ("manylinux2014_{arch}", "manylinux_2_28_{arch}")
EXTRA = ["pip"]  # not a dependency of any app, but the image build runs it from its wheel

HEADER = """\
# The third-party wheels of the app images, pinned with the sha256 of each file used on
# x86_64 and aarch64 (CPython {py}, manylinux): pip's hash-checking format. Written by
# apps/lock-wheelhouse.py from the apps' pyproject.toml dependencies and pip; regenerate
# it with that script, never by hand. apps/build-wheelhouse.sh downloads exactly these
# files and apps/Dockerfile installs exactly these (pip --require-hashes): a file that is
# not here fails the build. Under each entry: its files, in the order of its hashes.
"""


def normalize(name: str) -> str:
    """PEP 503 name: flask, charset-normalizer, prometheus-client."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(apps: Path) -> list[str]:
    """Our packages' third-party dependencies (as written, ranges included) and pip."""
    projects = [tomllib.loads(p.read_text(encoding="utf-8"))["project"]
                for p in sorted(apps.glob("*/pyproject.toml"))]
    ours = {normalize(p["name"]) for p in projects}
    wanted = []
    for project in projects:
        for req in project.get("dependencies", []):
            name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1)
            if normalize(name) not in ours and req not in wanted:
                wanted.append(req)
    return wanted + EXTRA


def download(arch: str, reqs: Path, dest: Path, constraints: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
           "--no-cache-dir", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", PYTHON_VERSION, "-d", str(dest), "-r", str(reqs)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform.format(arch=arch)]
    if constraints:
        cmd += ["-c", str(constraints)]
    print(f"[lock] resolving for cp{PYTHON_VERSION.replace('.', '')} manylinux {arch}", file=sys.stderr)
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"pip download failed for {arch} (above); nothing written")


def wheel_files(directory: Path) -> dict[str, tuple[str, str]]:
    """file name -> (normalized name, version), from the wheel file names."""
    found = {}
    for path in sorted(directory.iterdir()):
        if not path.name.endswith(".whl"):
            sys.exit(f"not a wheel: {path.name} (only wheels are locked)")
        name, version = path.name.split("-")[:2]
        found[path.name] = (normalize(name), version)
    return found


def resolve(apps: Path) -> str:
    """The lock's text, from what PyPI serves now."""
    with tempfile.TemporaryDirectory(prefix="lock-wheelhouse-") as tmp:
        tmp_dir = Path(tmp)
        reqs = tmp_dir / "requirements.in"
        reqs.write_text("\n".join(requirements(apps)) + "\n", encoding="utf-8")
        pins = tmp_dir / "constraints.txt"
        versions: dict[str, str] = {}
        files: dict[str, dict[str, list[str]]] = {}  # name -> file -> arches
        hashes: dict[str, str] = {}  # file -> sha256
        for arch in ARCHES:
            dest = tmp_dir / arch
            download(arch, reqs, dest, pins if versions else None)
            for filename, (name, version) in wheel_files(dest).items():
                if versions.setdefault(name, version) != version:
                    sys.exit(f"{name}: {version} on {arch} but {versions[name]} on {ARCHES[0]}")
                digest = hashlib.sha256((dest / filename).read_bytes()).hexdigest()
                if hashes.setdefault(filename, digest) != digest:
                    sys.exit(f"{filename}: different bytes in two downloads")
                files.setdefault(name, {}).setdefault(filename, []).append(arch)
            # The next architecture gets the same versions (its own files).
            pins.write_text("".join(f"{n}=={v}\n" for n, v in sorted(versions.items())), encoding="utf-8")

    out = [HEADER.format(py=PYTHON_VERSION)]
    for name in sorted(versions):
        entry = sorted(files[name].items())
        out.append(f"{name}=={versions[name]} \\\n")
        out.append(" \\\n".join(f"    --hash=sha256:{hashes[f]}" for f, _ in entry) + "\n")
        out.extend(f"    # {f} ({', '.join(arches)})\n" for f, arches in entry)
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 (with the diff) when the lock would change")
    parser.add_argument("--output", type=Path, default=LOCK, help=f"default {LOCK}")
    args = parser.parse_args()

    text = resolve(APPS)
    old = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
    if args.check:
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                       str(args.output), "resolved now"))
            sys.exit(1)
        print(f"[lock] {args.output} is what PyPI resolves now", file=sys.stderr)
        return
    args.output.write_text(text, encoding="utf-8")
    entries = text.count("==")
    print(f"[lock] {args.output}: {entries} distributions, {text.count('--hash=')} hashes"
          f"{' (unchanged)' if old == text else ''}", file=sys.stderr)


if __name__ == "__main__":
    main()
