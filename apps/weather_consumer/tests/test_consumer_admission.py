"""Which Consul entries reach the pool: ProducerPolicy, ConsulDiscovery, the settings.

A stolen Pi holds the producer token: through its own agent it can register entries on
its node with any service ID (another node's) and any address (a LAN host it owns).
"""

from __future__ import annotations

import ipaddress
import logging

import pytest
from weather_common.breaker import CircuitBreaker
from weather_common.consul import ConsulClient, HealthWatcher
from weather_common.consul import Instance as ConsulInstance
from weather_consumer import create_app
from weather_consumer.admission import ProducerPolicy, parse_cidrs
from weather_consumer.discovery import ConsulDiscovery
from weather_consumer.pool import Instance, InstancePool

SVC = "weather-producer"


def entry(sid, node, address="10.0.9.5", port=8000):
    return ConsulInstance(id=sid, service=SVC, address=address, port=port, node=node)


def pair(sid, node, address="10.0.9.5"):
    return Instance(sid, address, 8000), node


# ------------------------------------------------------------------- settings
def test_parse_cidrs_accepts_comma_or_space_separated_networks_and_lists():
    assert parse_cidrs("") == parse_cidrs(None) == parse_cidrs([]) == ()
    nets = parse_cidrs(" 10.0.9.0/24, fd00::/64  192.168.1.7")
    assert nets == (ipaddress.ip_network("10.0.9.0/24"), ipaddress.ip_network("fd00::/64"),
                    ipaddress.ip_network("192.168.1.7/32"))
    assert parse_cidrs(["10.0.9.0/24"]) == nets[:1]


@pytest.mark.parametrize("bad", ["10.0.9.5/24", "10.0.9.0/33", "overlay", "10.0.9.0/24,x",
                                 ["10.0.9.0/24", 7], 42])
def test_parse_cidrs_names_the_setting_on_a_bad_value(bad):
    with pytest.raises(ValueError, match="^PRODUCER_CIDRS: "):
        parse_cidrs(bad)


def consul_app(**config):
    cfg = {"TESTING": True, "CONSUL_HTTP_ADDR": "http://127.0.0.1:9", "START_DISCOVERY": False}
    cfg.update(config)
    return create_app(cfg)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WEATHER_CONSUMER_PRODUCER_CIDRS", "10.0.9.0/24,fd00::/64")
    monkeypatch.setenv("WEATHER_CONSUMER_PRODUCER_REQUIRE_NODE_ID", "false")
    policy = consul_app().extensions["weather_consumer"].discovery.policy
    assert policy.cidrs == parse_cidrs("10.0.9.0/24 fd00::/64")
    assert policy.require_node_id is False


def test_defaults_require_the_node_id_and_accept_any_address():
    rt = consul_app().extensions["weather_consumer"]
    assert (rt.discovery.policy.require_node_id, rt.discovery.policy.cidrs) == (True, ())
    assert rt.discovery.policy.service == SVC
    assert rt.discovery_status()["rejected"] == {"node": 0, "address": 0, "duplicate": 0}


@pytest.mark.parametrize("config, setting", [
    ({"PRODUCER_CIDRS": "10.0.9.0/24,10.0.10.1/24"}, "PRODUCER_CIDRS"),
    ({"PRODUCER_REQUIRE_NODE_ID": "flase"}, "PRODUCER_REQUIRE_NODE_ID"),
    ({"PRODUCER_REQUIRE_NODE_ID": ""}, "PRODUCER_REQUIRE_NODE_ID"),
    ({"PRODUCER_REQUIRE_NODE_ID": 2}, "PRODUCER_REQUIRE_NODE_ID"),
    # checked with a static list too (unused then): a typo must not wait for a redeploy
    ({"PRODUCER_CIDRS": "10.0.9", "PRODUCER_URLS": "http://127.0.0.1:1"}, "PRODUCER_CIDRS"),
])
def test_a_bad_setting_fails_at_start_naming_it(config, setting):
    with pytest.raises(ValueError, match=f"^{setting}: "):
        consul_app(**config)


# --------------------------------------------------------------------- policy
def test_the_service_id_must_belong_to_the_node_it_is_registered_on():
    policy = ProducerPolicy(SVC)
    assert policy.reason(f"{SVC}-pi1-abc", "pi1", "10.0.9.5") is None
    assert policy.reason(f"{SVC}-pi2-abc", "pi1", "10.0.9.5") == "node"  # another node's ID
    assert policy.reason(f"{SVC}-pi1", "pi1", "10.0.9.5") == "node"  # no "-" after the node
    assert policy.reason(f"{SVC}-pi10-abc", "pi1", "10.0.9.5") == "node"
    assert policy.reason(f"{SVC}-abc", "", "10.0.9.5") == "node"  # node unknown
    assert policy.reason(f"{SVC}--abc", "", "10.0.9.5") == "node"
    assert policy.reason("other-pi1-abc", "pi1", "10.0.9.5") == "node"
    assert ProducerPolicy(SVC, require_node_id=False).reason(f"{SVC}-pi2-abc", "pi1", "10.0.9.5") is None


def test_the_address_must_be_an_ip_inside_the_producer_networks():
    policy = ProducerPolicy(SVC, parse_cidrs("10.0.9.0/24,fd00:9::/64"), require_node_id=False)
    for ok in ("10.0.9.5", "10.0.9.255", "fd00:9::17"):
        assert policy.reason("x", "n", ok) is None, ok
    for bad in ("192.168.1.50", "10.0.10.5", "fd00:a::1", "::ffff:10.0.9.5",
                "producer.lan", "localhost"):
        assert policy.reason("x", "n", bad) == "address", bad
    assert ProducerPolicy(SVC, require_node_id=False).reason("x", "n", "producer.lan") is None


def test_node_is_checked_before_the_address():
    policy = ProducerPolicy(SVC, parse_cidrs("10.0.9.0/24"))
    assert policy.reason(f"{SVC}-pi2-a", "pi1", "192.0.2.1") == "node"


def test_admit_keeps_one_entry_per_id_the_longer_node_name_wins():
    """"pi1" may register an ID that looks like node "pi1-x"'s; the owner keeps it,
    whichever comes first."""
    policy = ProducerPolicy(SVC)
    real, rogue = pair(f"{SVC}-pi1-x-t1", "pi1-x"), pair(f"{SVC}-pi1-x-t1", "pi1", "10.0.9.66")
    other = pair(f"{SVC}-pi2-t2", "pi2")
    for order in ([real, rogue, other], [rogue, real, other]):
        good, rejected = policy.admit(order)
        assert [(i.id, i.address) for i in good] in ([(real[0].id, "10.0.9.5"), (other[0].id, "10.0.9.5")],
                                                     [(other[0].id, "10.0.9.5"), (real[0].id, "10.0.9.5")])
        assert [(r.node, r.address, r.reason) for r in rejected] == [("pi1", "10.0.9.66", "duplicate")]


def test_admit_without_node_ids_keeps_the_first_of_equal_node_names():
    policy = ProducerPolicy(SVC, require_node_id=False)
    good, rejected = policy.admit([pair("a", "n1", "10.0.0.1"), pair("a", "n2", "10.0.0.2")])
    assert [i.address for i in good] == ["10.0.0.1"]
    assert [(r.node, r.reason) for r in rejected] == [("n2", "duplicate")]


# ------------------------------------------------------------------ discovery
@pytest.fixture
def pool():
    return InstancePool(lambda iid: CircuitBreaker(name=iid))


def discovery(pool, **policy):
    watcher = HealthWatcher(ConsulClient("http://127.0.0.1:9"), SVC)
    return ConsulDiscovery(pool, watcher, policy=ProducerPolicy(SVC, **policy) if policy else None)


def test_rogue_entries_never_reach_the_pool(pool):
    disco = discovery(pool, cidrs=parse_cidrs("10.0.9.0/24"))
    disco.watcher.on_change([
        entry(f"{SVC}-pi1-t1", "pi1"),
        entry(f"{SVC}-pi2-t2", "pi2", "10.0.9.6"),
        entry(f"{SVC}-pi2-t2", "pi1", "10.0.9.66"),  # pi2's ID, registered by pi1
        entry(f"{SVC}-pi1-lan", "pi1", "192.168.1.50"),  # outside the overlay
        entry(f"{SVC}-pi1-dns", "pi1", "evil.lan"),
    ])
    assert {(i.id, i.address) for i in pool.healthy()} == {(f"{SVC}-pi1-t1", "10.0.9.5"),
                                                           (f"{SVC}-pi2-t2", "10.0.9.6")}
    assert disco.status()["rejected"] == {"node": 1, "address": 2, "duplicate": 0}
    assert disco.status()["skipped_entries"] == 0


def test_the_default_policy_requires_node_ids(pool):
    disco = discovery(pool)
    disco.watcher.on_change([entry(f"{SVC}-t1", "pi1"), entry(f"{SVC}-pi1-t1", "pi1")])
    assert [i.id for i in pool.healthy()] == [f"{SVC}-pi1-t1"]
    assert disco.status()["rejected"]["node"] == 1


def test_only_rogue_entries_empty_the_pool_but_garbage_keeps_the_last_list(pool):
    disco = discovery(pool, cidrs=parse_cidrs("10.0.9.0/24"))
    disco.watcher.on_change([entry(f"{SVC}-pi1-t1", "pi1")])
    disco.watcher.on_change([entry(f"{SVC}-pi1-t1", "pi1", port=0), None])  # garbage only
    assert [i.id for i in pool.healthy()] == [f"{SVC}-pi1-t1"]
    # the real producer left; what is passing is rogue: NOT a reason to keep the old list
    disco.watcher.on_change([entry(f"{SVC}-pi2-x", "pi1"), entry(f"{SVC}-pi1-y", "pi1", "192.0.2.7")])
    assert pool.healthy() == []
    assert disco.status()["rejected"] == {"node": 1, "address": 1, "duplicate": 0}
    assert disco.status()["skipped_entries"] == 2
    # rogue plus garbage: still no evidence for the old list
    disco.watcher.on_change([entry(f"{SVC}-pi2-x", "pi1"), None])
    assert pool.healthy() == []


def test_rejections_are_logged_when_the_set_changes_not_on_every_update(pool, caplog):
    disco = discovery(pool)
    real, rogue = entry(f"{SVC}-pi1-t1", "pi1"), entry(f"{SVC}-pi2-t9", "pi1", "192.0.2.7")
    other = entry(f"{SVC}-pi3-t3", "pi1", "192.0.2.8")

    def warnings():
        return [r for r in caplog.records
                if r.levelno == logging.WARNING and "rejected producer entry" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="weather_consumer.discovery"):
        disco.watcher.on_change([real, rogue])
        disco.watcher.on_change([rogue, real, entry(f"{SVC}-pi1-t2", "pi1")])  # rejected set unchanged
        assert len(warnings()) == 1
        message = warnings()[0].getMessage()
        assert f"{SVC}-pi2-t9" in message and "'pi1'" in message and "192.0.2.7" in message
        disco.watcher.on_change([real, rogue, other])
        assert len(warnings()) == 2 and f"{SVC}-pi3-t3" in warnings()[1].getMessage()
        disco.watcher.on_change([real])
        assert any("no producer entry is rejected any more" in r.getMessage() for r in caplog.records)
    assert disco.status()["rejected"] == {"node": 0, "address": 0, "duplicate": 0}


def test_the_operator_page_shows_rejected_entries(operator):
    app = consul_app()
    disco = app.extensions["weather_consumer"].discovery
    page = operator(app).get("/status").get_data(as_text=True)
    assert 'id="rejected"' not in page
    disco.watcher.on_change([entry(f"{SVC}-pi1-t1", "pi1"), entry(f"{SVC}-pi2-t2", "pi1"),
                             entry(f"{SVC}-pi3-t3", "pi1")])
    page = operator(app).get("/status").get_data(as_text=True)
    assert '<span id="rejected" class="pill bad">2 catalog entries rejected (see the log)</span>' in page
