"""Find the address to advertise in Consul.

Order: an explicit address; else the IPv4 address of a named interface; else the first
interface address inside a CIDR (e.g. the overlay network's subnet); else the address of
the interface carrying the default route; else the hostname's address; else 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

__all__ = ["interface_addresses", "detect_address"]

_SIOCGIFADDR = 0x8915


def _ifaddr(name: str) -> str | None:
    """IPv4 address of interface ``name`` (Linux ioctl), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_addresses() -> dict[str, str]:
    """``{interface: ipv4}`` for the interfaces that have an IPv4 address."""
    result: dict[str, str] = {}
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return result
    for name in names:
        addr = _ifaddr(name)
        if addr:
            result[name] = addr
    return result


def _default_route_address() -> str | None:
    # connect() on a UDP socket sends nothing; it just picks the outgoing interface.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            return s.getsockname()[0]
        except OSError:
            return None


def detect_address(explicit: str | None = None, interface: str | None = None, cidr: str | None = None) -> str:
    """The address other hosts should use to reach this process."""
    if explicit:
        return explicit
    if interface:
        addr = _ifaddr(interface)
        if addr:
            return addr
    if cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        for addr in interface_addresses().values():
            if ipaddress.ip_address(addr) in net:
                return addr
    addr = _default_route_address()
    if addr and not addr.startswith("0."):
        return addr
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
