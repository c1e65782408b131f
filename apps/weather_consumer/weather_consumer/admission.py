"""Which producer entries from Consul the consumer may route to.

The threat: every producer's Consul agent uses the same producer token, so a stolen Pi
can register, through its own agent, extra ``weather-producer`` instances on ITS node,
with any service ID and any address:

* the service ID of another node's producer - the pool is keyed by ID, so the real
  producer would be replaced by (or merged with) the rogue one;
* the address of a LAN host it controls, outside the swarm overlay - user requests (and
  the places they ask about) would go to a host we do not run.

What it cannot forge is the node an entry is registered on: each Consul agent registers
only with a token bound to its own node, so the catalog's ``Node.Node`` is trustworthy.

:class:`ProducerPolicy` therefore admits an entry only when

* (``require_node_id``) its service ID is ``<service>-<node>-...``, ``<node>`` being the
  node it is registered on (producers with ``NODE_NAME_FILE`` register that way), and
* (``cidrs``, when any are given) its address is an IP literal inside one of them.

Residual case: when one node's name is another's followed by ``-`` ("pi1" and "pi1-x"),
"pi1" may also register IDs that look like "pi1-x"'s. If two admitted entries carry one
ID, the one registered on the longer node name keeps it (if either is the owner, that
one is), the other is rejected as ``duplicate``. Node names that are not such prefixes
of each other (manager, pi1, pi2) leave no ambiguity.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Union

from .pool import Instance

__all__ = ["ProducerPolicy", "Rejection", "REASONS", "parse_cidrs"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: why an entry was rejected (the keys of ConsulDiscovery.status()["rejected"])
REASONS = {
    "node": "its service ID is not <service>-<its node>-...: not that node's to register",
    "address": "its address is not an IP inside PRODUCER_CIDRS",
    "duplicate": "an entry on a longer node name holds the same service ID",
}


@dataclass(frozen=True)
class Rejection:
    """One entry left out, with what the log shows about it."""

    id: str
    node: str
    address: str
    reason: str  # one of REASONS


def parse_cidrs(value, setting: str = "PRODUCER_CIDRS") -> tuple[Network, ...]:
    """``"10.0.9.0/24, fd00::/64"`` (or a list) -> networks; empty -> ``()`` (any address).

    Raises ``ValueError`` naming ``setting`` for anything that is not a network; host
    bits set ("10.0.9.5/24") count as a typo, not as "10.0.9.0/24".
    """
    if value is None or value == "" or value == []:
        return ()
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{setting}: expected comma-separated networks, got {type(value).__name__}")
    networks = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{setting}: {item!r} is not a network (a string like 10.0.9.0/24)")
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{setting}: {item.strip()!r} is not an IPv4/IPv6 network ({exc})") from None
    return tuple(networks)


class ProducerPolicy:
    """Admit the producer entries a node may have registered; reject the others.

    Args:
        service: the Consul service name (``PRODUCER_SERVICE``).
        cidrs: the networks producers live in (``PRODUCER_CIDRS``); empty: any address.
        require_node_id: ``PRODUCER_REQUIRE_NODE_ID``.
    """

    def __init__(self, service: str, cidrs: Iterable[Network] = (), require_node_id: bool = True):
        self.service = service
        self.cidrs = tuple(cidrs)
        self.require_node_id = bool(require_node_id)

    def reason(self, service_id: str, node: str, address: str) -> str | None:
        """Why this entry must not be used ("node", "address"), or None."""
        if self.require_node_id and not (node and service_id.startswith(f"{self.service}-{node}-")):
            return "node"
        if self.cidrs and not self._inside(address):
            return "address"
        return None

    def _inside(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # a host name: its answer could change under us
            return False
        return any(ip in net for net in self.cidrs)

    def admit(self, entries: Iterable[tuple[Instance, str]]) -> tuple[list[Instance], list[Rejection]]:
        """``(instance, node)`` pairs -> (admitted instances, one ID each; rejections)."""
        owners: dict[str, tuple[Instance, str]] = {}
        rejected: list[Rejection] = []
        for inst, node in entries:
            why = self.reason(inst.id, node, inst.address)
            if why is None:
                held = owners.get(inst.id)
                if held is None or len(node) > len(held[1]):
                    owners[inst.id] = (inst, node)
                    if held is None:
                        continue
                    inst, node = held  # the shorter node loses the ID
                why = "duplicate"
            rejected.append(Rejection(inst.id, node, inst.address, why))
        return [inst for inst, _node in owners.values()], rejected
