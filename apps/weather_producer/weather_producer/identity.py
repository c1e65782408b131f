"""The producer's name: the ``instance`` field, and its Consul service ID suffix.

Without ``NODE_NAME_FILE``: ``INSTANCE_ID``, else the hostname (service ID
``<service>-<instance>``). With it: ``<node>-<INSTANCE_ID or hostname>``, ``<node>`` being
the Consul node name of the host read from that file, so the service ID is
``<service>-<node>-<task>``. Consumers that require it (``PRODUCER_REQUIRE_NODE_ID``)
only accept a producer entry whose ID starts with the name of the node it is registered
on: a stolen Pi can then no longer pass its entries off as another node's producer.
"""

from __future__ import annotations

import re
import socket

__all__ = ["NODE_NAME", "read_node_name", "instance_name"]

#: a Consul node name as we accept it (letters, digits, "_", ".", "-"; at most 63)
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def read_node_name(path: str, setting: str = "NODE_NAME_FILE") -> str:
    """The node name in the file ``path`` (surrounding whitespace stripped).

    Raises ``ValueError`` naming ``setting`` when the file cannot be read, is empty or
    holds no valid node name (its content is not echoed: it may be the wrong file).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(4096)
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{setting}: {path} is not UTF-8 text") from None
    name = text.strip()
    if not name:
        raise ValueError(f"{setting}: {path} is empty")
    if not NODE_NAME.fullmatch(name):
        raise ValueError(f"{setting}: {path} does not hold a Consul node name "
                         "(1-63 of A-Z a-z 0-9 _ . -, starting with a letter or digit)")
    return name


def instance_name(node_name_file: str | None, instance_id: str | None) -> str:
    """``INSTANCE_ID`` (default: the hostname), prefixed by ``<node>-`` when
    ``node_name_file`` is set."""
    base = str(instance_id or socket.gethostname())
    if not node_name_file:
        return base
    return f"{read_node_name(str(node_name_file))}-{base}"
