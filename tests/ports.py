"""Ports for processes that must be told theirs before they start (a TensorFlow cluster's
TF_CONFIG lists every worker's address up front). Everything else binds port 0 and reports
the port it got.

`bind(port 0)` hands out ports from the kernel's ephemeral range, the same range every
outgoing connection takes its source port from; a port found free there and released can
be taken by any test's next connection before the worker binds it. These come from below
that range, which the kernel never hands out by itself, and are checked free."""

import random
import socket
from typing import List

_LOWEST = 20000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def reserved_ports(count: int, host: str = "127.0.0.1") -> List[int]:
    """`count` distinct ports on `host`, outside the ephemeral range and free right now."""
    ephemeral = _ephemeral_low()
    low, high = (_LOWEST, ephemeral - 1) if ephemeral > _LOWEST + 1000 else (10000, 19999)
    ports: List[int] = []
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(low, high)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError(f"found only {len(ports)} of {count} free ports in [{low}, {high}]")
