"""NODE_NAME_FILE: the producer's instance (and Consul service ID) starts with its node."""

from __future__ import annotations

import socket

import pytest

from weather_producer import create_app
from weather_producer.identity import instance_name, read_node_name


def app_with(tmp_path, owm_key_file, **config):
    cfg = {"TESTING": True, "OWM_API_KEY_FILE": str(owm_key_file),
           "OWM_BASE_URL": "http://127.0.0.1:9", "INSTANCE_ID": "task7"}
    cfg.update(config)
    return create_app(cfg)


def instance_of(app):
    return app.extensions["weather_producer"].service.instance


def node_file(tmp_path, text):
    path = tmp_path / "node_name"
    path.write_text(text)
    return path


def test_unset_keeps_instance_id_or_hostname(tmp_path, owm_key_file):
    assert instance_of(app_with(tmp_path, owm_key_file)) == "task7"
    assert instance_of(app_with(tmp_path, owm_key_file, INSTANCE_ID=None)) == socket.gethostname()


def test_node_name_prefixes_the_instance(tmp_path, owm_key_file):
    path = node_file(tmp_path, "  pi1.lab_2-b\n")
    assert instance_of(app_with(tmp_path, owm_key_file, NODE_NAME_FILE=str(path))) == "pi1.lab_2-b-task7"
    assert instance_name(str(path), None) == f"pi1.lab_2-b-{socket.gethostname()}"


def test_the_setting_comes_from_the_environment(tmp_path, owm_key_file, monkeypatch):
    monkeypatch.setenv("WEATHER_PRODUCER_NODE_NAME_FILE", str(node_file(tmp_path, "manager")))
    assert instance_of(app_with(tmp_path, owm_key_file)) == "manager-task7"


@pytest.mark.parametrize("text, why", [
    ("", "is empty"), (" \n\t", "is empty"),
    ("pi 1", "does not hold a Consul node name"), ("-pi1", "does not hold a Consul node name"),
    ("pi1/x", "does not hold a Consul node name"), ("pi1\npi2", "does not hold a Consul node name"),
    ("p" * 64, "does not hold a Consul node name"), ("pï1", "does not hold a Consul node name"),
])
def test_a_bad_file_fails_at_start_naming_the_setting(tmp_path, owm_key_file, text, why):
    path = node_file(tmp_path, text)
    with pytest.raises(ValueError, match=f"^NODE_NAME_FILE: {path} {why}") as info:
        app_with(tmp_path, owm_key_file, NODE_NAME_FILE=str(path))
    if text.strip():
        assert text.strip() not in str(info.value)  # maybe the wrong file (a token): not echoed


def test_a_missing_or_unreadable_file_fails_at_start(tmp_path, owm_key_file):
    with pytest.raises(ValueError, match="^NODE_NAME_FILE: cannot read .*missing"):
        app_with(tmp_path, owm_key_file, NODE_NAME_FILE=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="^NODE_NAME_FILE: cannot read"):
        read_node_name(str(tmp_path))  # a directory
    (tmp_path / "bin").write_bytes(b"\xff\xfe pi1")
    with pytest.raises(ValueError, match="^NODE_NAME_FILE: .* is not UTF-8 text"):
        read_node_name(str(tmp_path / "bin"))


def test_longest_valid_name_is_accepted(tmp_path):
    assert read_node_name(str(node_file(tmp_path, "p" * 63))) == "p" * 63
