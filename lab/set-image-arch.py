#!/usr/bin/env python3
"""Record the real architecture in a local Docker image's config.

The host's Docker 20.10 records "amd64" for images made by `docker import
--platform linux/arm64` and for everything built on top of them. A multi-arch tag
(manifest list) on the lab mirror should say what each image really is, so this
rewrites the image config: `docker save` -> set architecture/variant -> `docker load`.
The layers are untouched; the image ID changes (it is the config's digest).

    lab/set-image-arch.py IMAGE ARCH        e.g. weather-lab/consul:1.8.7-arm64 arm64
"""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile

VARIANTS = {"arm64": "v8", "arm": "v7"}


def docker_inspect_arch(image: str) -> str:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Architecture}}", image],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def rewrite(image: str, arch: str) -> None:
    with tempfile.TemporaryFile() as saved, tempfile.TemporaryFile() as patched:
        subprocess.run(["docker", "save", image], check=True, stdout=saved)
        saved.seek(0)
        with tarfile.open(fileobj=saved) as src, tarfile.open(fileobj=patched, mode="w") as dst:
            manifest = json.load(src.extractfile("manifest.json"))
            if len(manifest) != 1:
                raise SystemExit(f"expected one image in the saved tar of {image}")
            old_config_name = manifest[0]["Config"]
            config = json.load(src.extractfile(old_config_name))
            config["architecture"] = arch
            if arch in VARIANTS:
                config["variant"] = VARIANTS[arch]
            else:
                config.pop("variant", None)
            config_bytes = json.dumps(config, separators=(",", ":")).encode()
            new_config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
            manifest[0]["Config"] = new_config_name
            manifest[0]["RepoTags"] = [image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"]
            for member in src.getmembers():
                if member.name in (old_config_name, "manifest.json", "repositories"):
                    continue
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
            for name, data in ((new_config_name, config_bytes),
                               ("manifest.json", json.dumps(manifest).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                dst.addfile(info, io.BytesIO(data))
        patched.seek(0)
        subprocess.run(["docker", "load", "-q"], check=True, stdin=patched, stdout=subprocess.DEVNULL)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    image, arch = sys.argv[1], sys.argv[2]
    if docker_inspect_arch(image) == arch:
        return
    rewrite(image, arch)
    got = docker_inspect_arch(image)
    if got != arch:
        raise SystemExit(f"{image}: architecture is still {got}, wanted {arch}")
    print(f"[set-image-arch] {image}: architecture {arch}", file=sys.stderr)


if __name__ == "__main__":
    main()
