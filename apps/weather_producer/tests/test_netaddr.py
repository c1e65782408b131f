"""Advertise-address detection on this machine's real interfaces."""

from __future__ import annotations

import ipaddress

from weather_producer.netaddr import detect_address, interface_addresses


def test_interfaces_include_loopback():
    addrs = interface_addresses()
    assert addrs.get("lo") == "127.0.0.1"


def test_explicit_interface_and_cidr():
    assert detect_address("10.9.9.9") == "10.9.9.9"
    assert detect_address(interface="lo") == "127.0.0.1"
    assert detect_address(cidr="127.0.0.0/8") == "127.0.0.1"
    non_lo = {n: a for n, a in interface_addresses().items() if n != "lo"}
    for name, addr in non_lo.items():
        assert detect_address(interface=name) == addr
        assert detect_address(cidr=str(ipaddress.ip_network(f"{addr}/24", strict=False))) in non_lo.values()


def test_default_is_a_usable_ipv4():
    addr = ipaddress.ip_address(detect_address())
    assert addr.version == 4 and not addr.is_unspecified
