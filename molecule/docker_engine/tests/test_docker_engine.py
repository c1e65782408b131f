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
    """The inventory's users (production's: the admin user Ansible logs in as) are in the
    docker group."""
    admin = host.ansible.get_variables()["ansible_user"]
    assert admin != "root"
    assert "docker" in host.user(admin).groups


def test_container_runs_native_architecture(host, lab_image):
    """A real container runs on the node's own daemon and reports the node's architecture."""
    arch = host.check_output(f"docker run --rm {lab_image} uname -m")
    assert arch == EXPECTED_ARCH[host.backend.hostname]


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


def test_rpi_rebooted_with_the_memory_cgroup(host):
    """The Pi was rebooted by the role (production's workers.yml enables it): the kernel it
    runs now has the arguments, which its first boot's cmdline.txt (the role's backup)
    did not have."""
    if host.backend.hostname != "pi1":
        return
    running = host.file("/proc/cmdline").content_string.split()
    assert "cgroup_enable=memory" in running and "cgroup_memory=1" in running
    backups = host.run("cat /boot/firmware/cmdline.txt.*~")  # as root (the verifier's sudo)
    assert backups.rc == 0 and "cgroup_enable=memory" not in backups.stdout, backups


def test_memory_limits_enforced(host, lab_image):
    """Docker enforces a container's memory limit: the daemon reports support, and the
    container's own memory cgroup carries the 64 MiB it was given (a Pi that never
    rebooted would start it with no limit and a warning)."""
    info = json.loads(host.check_output("docker info --format '{{ json . }}'"))
    assert info["MemoryLimit"] is True
    assert not [w for w in info.get("Warnings") or [] if "memory limit" in w.lower()]
    run = host.run(f"docker run --rm --memory 64m {lab_image} "
                   "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert run.rc == 0 and "WARNING" not in run.stderr, run
    assert run.stdout.strip() == str(64 * 1024 * 1024)


def test_no_stale_local_facts(host):
    """Nothing reads docker_engine's old local facts: the role removes the file."""
    assert not host.file("/etc/ansible/facts.d/docker_engine.fact").exists
