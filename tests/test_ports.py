"""Ports the supervisor picks for its children: outside the range the kernel gives outgoing
connections (a port picked there was once taken by a connection before the child could bind it)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from archipel._deploy.children import free_port


def test_picked_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(port < low for port in ports), ports
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        taken = listener.getsockname()[1]
        draws = iter([taken, taken, taken + 1])
        monkeypatch.setattr(random, "randrange", lambda *_: next(draws))
        assert free_port() == taken + 1
