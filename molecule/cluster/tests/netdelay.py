"""Hold packets for a fixed time: a netem stand-in for a kernel without sch_netem.

This machine's kernel has no netem qdisc (docs/testing.md), but it has the NFQUEUE
target and nfnetlink_queue. An iptables rule sends the packets to slow down to a queue;
this module reads them from that queue over a raw netlink socket (standard library only)
and gives each its ACCEPT verdict ``delay`` seconds after it arrived, in order. That is
what `tc qdisc ... netem delay` does to the matched packets: the packets themselves are
untouched, only late.

    with PacketDelay(queue=7, delay=1.5):
        ...   # packets sent to queue 7 by an iptables rule leave 1.5 s late

Run as root in the network namespace of the rule (the tests run it on this machine,
where the lab nodes' bridge is, with bridge-nf-call-iptables on).
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import threading
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg_type: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, seq, 0)
    return header + body


def _attrs(data: bytes):
    i = 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        if length < 4:
            break
        yield kind & 0x7FFF, data[i + 4:i + length]
        i += (length + 3) & ~3


class PacketDelay:
    """Accept every packet of NFQUEUE ``queue`` ``delay`` seconds after it was queued."""

    def __init__(self, queue: int, delay: float, maxlen: int = 4096) -> None:
        self.queue, self.delay, self.maxlen = queue, float(delay), maxlen
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.delayed = 0  # packets given their verdict
        self._held: collections.deque[tuple[float, int]] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._receive, daemon=True),
                         threading.Thread(target=self._release, daemon=True)]

    def _config(self, attrs: bytes) -> None:
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        reply = self.sock.recv(65536)
        if len(reply) >= 20:
            (msg_type,) = struct.unpack_from("=H", reply, 4)
            (error,) = struct.unpack_from("=i", reply, 16)
            if msg_type == NLMSG_ERROR and error != 0:
                raise OSError(-error, f"nfqueue {self.queue} config: {os.strerror(-error)}")

    def __enter__(self) -> "PacketDelay":
        self._config(_attr(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
        self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", self.maxlen)))
        for t in self._threads:
            t.start()
        return self

    def _receive(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, OSError):
                continue
            i = 0
            while i + 16 <= len(data):
                length, msg_type = struct.unpack_from("=IH", data, i)
                if length < 16:
                    break
                if msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    for kind, value in _attrs(data[i + 20:i + length]):
                        if kind == NFQA_PACKET_HDR:
                            (packet_id,) = struct.unpack_from("!I", value)
                            with self._cond:
                                self._held.append((time.monotonic() + self.delay, packet_id))
                                self._cond.notify()
                i += (length + 3) & ~3

    def _verdict(self, packet_id: int) -> None:
        attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
        self.sock.send(_message(NFQNL_MSG_VERDICT, self.queue, attrs))
        self.delayed += 1

    def _release(self) -> None:
        while True:
            with self._cond:
                while not self._held and not self._stop.is_set():
                    self._cond.wait(0.2)
                if not self._held:  # stopping, nothing left
                    return
                due, packet_id = self._held[0]
                wait = due - time.monotonic()
                if wait > 0 and not self._stop.is_set():
                    self._cond.wait(wait)
                    continue
                self._held.popleft()
            self._verdict(packet_id)

    def __exit__(self, *exc) -> None:
        # Release what is held (at once), then unbind: no packet stays stuck.
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)
        try:
            self._config(_attr(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_UNBIND, 0)))
        except OSError:
            pass
        self.sock.close()
