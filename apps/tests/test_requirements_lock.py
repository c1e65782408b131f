"""apps/requirements.lock: the only third-party files the app images are built from.

The lock (written by apps/lock-wheelhouse.py) pins every third-party distribution with
the sha256 of its x86_64 and aarch64 wheels; build-wheelhouse.sh downloads exactly
those, apps/Dockerfile installs exactly those. These tests run pip the way the image
build does (the wheelhouse's own pip wheel, ``--require-hashes --no-index
--find-links``, pip itself left out of the install) with ``--target`` and the image's
interpreter and platform (CPython 3.13, manylinux of each architecture), so they need
neither Docker nor the network: they use apps/.wheelhouse/<arch>/ as build-wheelhouse.sh
left it, and run that script (PyPI, from the host) only when the wheelhouse is missing
or holds other versions than the lock. Seconds each.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

APPS = Path(__file__).resolve().parents[1]
REPO = APPS.parent
LOCK = APPS / "requirements.lock"
TAGS_SCRIPT = REPO / "roles" / "weather_images" / "files" / "weather_images_tags.py"
ARCHES = ("x86_64", "aarch64")
PYPROJECTS = sorted(APPS.glob("*/pyproject.toml"))
OURS = {canonicalize_name(tomllib.loads(p.read_text())["project"]["name"]) for p in PYPROJECTS}
HASH_ERROR = "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE"


def parse_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, sha256 hashes), read as pip reads the file (continuations, comments)."""
    entries: dict[str, tuple[str, set[str]]] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        spec, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^=<>!~;\s]+)", spec)
        assert match, f"not pinned with ==: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in entries, f"{name} is locked twice"
        hashes = set()
        for option in options:
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", option), f"{name}: {option!r}"
            hashes.add(option.split(":", 1)[1])
        entries[name] = (match.group(2), hashes)
    return entries


def without_pip(text: str) -> str:
    """The lock without pip's entry: what apps/Dockerfile installs (pip only runs the install)."""
    kept, skip = [], False
    for line in text.splitlines(keepends=True):
        if line[:1] not in ("", " ", "#", "\n"):
            skip = line.startswith("pip==")
        if not skip:
            kept.append(line)
    return "".join(kept)


def third_party_wheels(wheelhouse: Path) -> dict[str, Path]:
    """name -> wheel file, for the wheels in the wheelhouse that are not our packages."""
    wheels = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(path.name)[0])
        if name not in OURS:
            assert name not in wheels, f"two wheels of {name} in {wheelhouse}"
            wheels[name] = path
    return wheels


def wheel_version(path: Path) -> str:
    return str(parse_wheel_filename(path.name)[1])


def pip_install(wheelhouse: Path, lock: Path, target: Path, arch: str) -> subprocess.CompletedProcess:
    """apps/Dockerfile's install of the third-party wheels, for ``arch``, into ``target``."""
    pip_wheel = next(wheelhouse.glob("pip-*.whl"))
    # This machine's pip configuration (its own indexes and find-links) stays out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return subprocess.run(
        [sys.executable, f"{pip_wheel}/pip", "install", "--disable-pip-version-check", "--no-cache-dir",
         "--require-hashes", "-r", str(lock), "--no-index", "--find-links", str(wheelhouse),
         "--target", str(target), "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.13",
         "--platform", f"manylinux2014_{arch}", "--platform", f"manylinux_2_28_{arch}"],
        capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, set[str]]]:
    return parse_lock(LOCK.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=ARCHES)
def wheelhouse(request, lock) -> tuple[str, Path]:
    """(arch, apps/.wheelhouse/<arch>), built by build-wheelhouse.sh when it holds other versions."""
    arch = request.param
    path = APPS / ".wheelhouse" / arch
    pins = {name: version for name, (version, _) in lock.items()}
    if {n: wheel_version(p) for n, p in third_party_wheels(path).items()} != pins:
        subprocess.run(["bash", str(APPS / "build-wheelhouse.sh"), arch], check=True, capture_output=True,
                       timeout=600)
    return arch, path


def test_lock_pins_each_distribution_once_with_its_hashes(lock):
    """Every entry is name==version with sha256 hashes; pip is there, our own packages are not."""
    assert "pip" in lock
    assert not OURS & lock.keys(), "our packages are built locally, never locked"
    for name, (version, hashes) in lock.items():
        Version(version)
        assert hashes, f"{name} has no hash"


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=[p.parent.name for p in PYPROJECTS])
def test_lock_satisfies_the_apps_dependency_ranges(lock, pyproject):
    """Each third-party dependency of an app is locked at a version inside its range."""
    for dependency in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(dependency)
        name = canonicalize_name(req.name)
        if name in OURS:
            continue
        assert name in lock, f"{dependency} ({pyproject.parent.name}) is not in the lock: run apps/lock-wheelhouse.py"
        version = lock[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside {dependency} ({pyproject.parent.name}): run apps/lock-wheelhouse.py")


def test_the_wheelhouse_holds_exactly_the_locked_files(lock, wheelhouse):
    """Each third-party wheel build-wheelhouse.sh left is a locked version with a locked hash, and
    every locked distribution has its wheel."""
    arch, path = wheelhouse
    wheels = third_party_wheels(path)
    assert wheels.keys() == lock.keys(), f"{arch}: wheelhouse and lock disagree"
    for name, wheel in wheels.items():
        version, hashes = lock[name]
        assert wheel_version(wheel) == version, wheel.name
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() in hashes, f"{arch}: {wheel.name} is not locked"


def test_the_wheelhouse_installs_from_the_lock_alone(lock, wheelhouse, tmp_path):
    """The image's install (--require-hashes, pip left out) succeeds with exactly the locked
    distributions: none is missing from the lock (pip resolves their dependencies)."""
    arch, path = wheelhouse
    runtime_lock = tmp_path / "runtime.lock"
    runtime_lock.write_text(without_pip(LOCK.read_text(encoding="utf-8")), encoding="utf-8")
    target = tmp_path / "site-packages"
    proc = pip_install(path, runtime_lock, target, arch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = dict(d.name.removesuffix(".dist-info").split("-") for d in target.glob("*.dist-info"))
    installed = {canonicalize_name(name): version for name, version in installed.items()}
    assert installed == {name: version for name, (version, _) in lock.items() if name != "pip"}


def test_a_wheel_whose_hash_is_not_in_the_lock_fails_the_install(wheelhouse, tmp_path):
    """One byte changed in one wheel (same name): pip refuses with a hash mismatch and installs nothing."""
    arch, path = wheelhouse
    links = tmp_path / "wheels"
    shutil.copytree(path, links)
    wheel = third_party_wheels(links)["markupsafe"]  # a per-architecture wheel
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    runtime_lock = tmp_path / "runtime.lock"
    runtime_lock.write_text(without_pip(LOCK.read_text(encoding="utf-8")), encoding="utf-8")
    target = tmp_path / "site-packages"
    proc = pip_install(links, runtime_lock, target, arch)
    assert proc.returncode != 0
    assert HASH_ERROR in proc.stderr, proc.stderr[-3000:]
    assert f"markupsafe=={wheel_version(wheel)}" in proc.stderr.lower()
    assert not list(target.glob("*.dist-info")), "nothing may be installed"


def test_a_dependency_missing_from_the_lock_fails_the_install(wheelhouse, tmp_path):
    """A lock without one transitive dependency (idna, needed by requests) fails the install:
    in hash-checking mode pip takes nothing that is not pinned with its hashes."""
    arch, path = wheelhouse
    text = without_pip(LOCK.read_text(encoding="utf-8"))
    short = re.sub(r"^idna==.*?(?=^\S)", "", text, flags=re.M | re.S)
    assert short != text and "idna" not in parse_lock(short)
    runtime_lock = tmp_path / "runtime.lock"
    runtime_lock.write_text(short, encoding="utf-8")
    proc = pip_install(path, runtime_lock, tmp_path / "site-packages", arch)
    assert proc.returncode != 0
    assert "--require-hashes" in proc.stderr and "idna" in proc.stderr, proc.stderr[-3000:]


def run_tags(apps_dir: Path) -> dict:
    import json

    proc = subprocess.run(
        [sys.executable, str(TAGS_SCRIPT), "--apps-dir", str(apps_dir), "--base-image", "python:3.13-slim-trixie",
         "--app", "producer=weather_producer", "--image", "producer:amd64", "--image", "producer:arm64",
         "--wheel-arch", "x86_64", "--wheel-arch", "aarch64"],
        capture_output=True, text=True, check=True, timeout=60)
    return json.loads(proc.stdout)


def test_a_new_lock_makes_the_wheelhouse_stale_and_changes_the_tags(tmp_path):
    """roles/weather_images: a wheelhouse stamped with the current sources is current; after a
    change to the lock alone it is stale (the role rebuilds it) and every image tag changes."""
    apps = tmp_path / "apps"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis")
    for directory in ("weather_common", "weather_producer"):
        shutil.copytree(APPS / directory, apps / directory, ignore=ignore)
    for name in ("Dockerfile", "requirements.lock"):
        shutil.copy(APPS / name, apps / name)
    for arch in ARCHES:  # the tags hash the wheels' names: the same before and after
        (apps / ".wheelhouse" / arch).mkdir(parents=True)
        (apps / ".wheelhouse" / arch / "pip-26.3-py3-none-any.whl").touch()
    before = run_tags(apps)
    assert not any(state["current"] for state in before["wheelhouse"].values()), "no stamp yet"
    for state in before["wheelhouse"].values():  # as the role does after build-wheelhouse.sh
        (Path(state["path"]) / ".weather-app-sources").write_text(state["sources"] + "\n")
    stamped = run_tags(apps)
    assert all(state["current"] for state in stamped["wheelhouse"].values())
    assert stamped["images"] == before["images"]

    lock = apps / "requirements.lock"
    old_hash = next(iter(parse_lock(lock.read_text())["blinker"][1]))
    lock.write_text(lock.read_text().replace(old_hash, "0" * 64))
    after = run_tags(apps)
    assert not any(state["current"] for state in after["wheelhouse"].values())
    assert {i["arch"]: i["tag"] for i in after["images"]}.items().isdisjoint(
        {i["arch"]: i["tag"] for i in before["images"]}.items())
    assert after["lists"][0]["tag"] != before["lists"][0]["tag"]
