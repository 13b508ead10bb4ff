"""An app whose second service cannot start: `archipel run` must stop everything and say why."""

from __future__ import annotations

from archipel import App, Service, rpc


class Healthy(Service):
    @rpc
    async def ping(self) -> str:
        return "pong"


class Unlucky(Service):
    async def start(self) -> None:
        raise RuntimeError("database at 127.0.0.1:1 is unreachable")


app = App("broken", [Healthy, Unlucky])
