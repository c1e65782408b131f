"""Verify the docker_engine role on an amd64 node and an (emulated) arm64 Pi node."""

import json

import pytest

EXPECTED_ARCH = {"manager": "x86_64", "pi1": "aarch64"}


@pytest.fixture()
def daemon_json(host):
    return json.loads(host.file("/etc/docker/daemon.json").content_string)


@pytest.fixture()
def lab_image(host):
    """Import the lab's busybox rootfs (this node's architecture) into the node's daemon."""
    host.run_test(
        "docker image inspect lab/busybox:latest >/dev/null 2>&1 || "
        "tar -C /opt/lab/busybox-rootfs -c . | docker import - lab/busybox:latest"
    )
    return "lab/busybox:latest"


def test_engine_package_installed(host):
    """docker.io is installed from the distribution."""
    assert host.package("docker.io").is_installed


def test_service_enabled_and_running(host):
    """The docker service starts at boot and runs now."""
    docker = host.service("docker")
    assert docker.is_enabled
    assert docker.is_running


def test_daemon_answers(host):
    """The daemon answers the CLI and uses the configured log driver."""
    out = host.check_output("docker info --format '{{ .LoggingDriver }}'")
    assert out == "local"


def test_daemon_json_sd_card_defaults(daemon_json):
    """Container logs are bounded (local driver, 3 x 10 MB)."""
    assert daemon_json["log-driver"] == "local"
    assert daemon_json["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert daemon_json["live-restore"] is False


def test_daemon_json_registries(daemon_json):
    """Mirrors and insecure registries from the inventory reach daemon.json."""
    assert daemon_json["registry-mirrors"] == ["http://weather-lab-mirror:5000"]
    assert daemon_json["insecure-registries"] == ["registry.lab.invalid:5000"]


def test_daemon_applied_registry_config(host):
    """The running daemon loaded the mirror (the handler restarted it)."""
    mirrors = host.check_output("docker info --format '{{ json .RegistryConfig.Mirrors }}'")
    assert json.loads(mirrors) == ["http://weather-lab-mirror:5000/"]


def test_runtime_shim_only_on_emulated_node(host, daemon_json):
    """Only the emulated arm64 node runs the lab's runc shim; the amd64 node stays stock."""
    if host.backend.hostname == "pi1":
        assert daemon_json["default-runtime"] == "lab-runc"
    else:
        assert "default-runtime" not in daemon_json
        assert "runtimes" not in daemon_json


def test_registry_ca_installed(host):
    """The registry's CA lands where Docker looks for it."""
    ca = host.file("/etc/docker/certs.d/registry.lab.invalid:5443/ca.crt")
    assert ca.is_file
    assert ca.mode == 0o644
    assert ca.content_string.startswith("-----BEGIN CERTIFICATE-----")


def test_admin_in_docker_group(host):
    """The listed users are in the docker group."""
    assert "docker" in host.user("lab-admin").groups


def test_container_runs_native_architecture(host, lab_image):
    """A real container runs on the node's own daemon and reports the node's architecture."""
    arch = host.check_output(f"docker run --rm {lab_image} uname -m")
    assert arch == EXPECTED_ARCH[host.backend.hostname]


def test_container_memory_limit_accepted(host, lab_image):
    """A container with a memory limit starts (the limit a Pi-friendly deployment sets)."""
    out = host.check_output(f"docker run --rm --memory 64m {lab_image} echo limited")
    assert out == "limited"


def test_local_facts_published(host):
    """Other roles can read what docker_engine configured from local facts."""
    facts = json.loads(host.file("/etc/ansible/facts.d/docker_engine.fact").content_string)
    assert facts["install_source"] == "distro"
    assert facts["daemon_options"]["log-driver"] == "local"


def test_rpi_cmdline_gets_memory_cgroup(host):
    """On the Pi, cmdline.txt gains the memory cgroup, stays one line and keeps its arguments."""
    if host.backend.hostname != "pi1":
        assert not host.file("/boot/firmware/cmdline.txt").exists
        return
    content = host.file("/boot/firmware/cmdline.txt").content_string
    assert content.count("\n") == 1
    args = content.split()
    assert args[:2] == ["console=serial0,115200", "console=tty1"]
    assert "cgroup_enable=memory" in args and "cgroup_memory=1" in args
    assert len(args) == len(set(args))


def test_rpi_reboot_reported_not_done(host):
    """The running kernel lacks the new arguments: a reboot is reported as needed, not done."""
    facts = json.loads(host.file("/etc/ansible/facts.d/docker_engine.fact").content_string)
    assert facts["rpi_reboot_required"] is (host.backend.hostname == "pi1")
