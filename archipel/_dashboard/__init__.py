"""The live dashboard ``archipel run`` serves on 127.0.0.1: topology, call and event rates,
processes, events and dead letters, traces, a catalog with an API explorer, and (when enabled)
controls to stop, pause and resume a replica."""

from .server import Dashboard

__all__ = ["Dashboard"]
