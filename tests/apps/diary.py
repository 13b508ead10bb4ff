"""A small app for the logging tests: public methods that log what they are told."""

from __future__ import annotations

import logging

from archipel import App, Service, rpc

log = logging.getLogger("diary")


class Diary(Service):
    @rpc(public=True)
    async def note(self, text: str, level: str = "INFO") -> str:
        log.log(logging.getLevelNamesMapping()[level], "noted %s", text)
        return text

    @rpc(public=True)
    async def fail(self, text: str) -> None:
        try:
            raise RuntimeError(text)
        except RuntimeError:
            log.exception("could not note %s", text)

    @rpc(public=True)
    async def chatter(self, text: str) -> None:
        """What the MQTT client says of its connection: routine at INFO, a problem at WARNING."""
        mqtt = logging.getLogger("archipel.mqtt")
        mqtt.info("routine %s", text)
        mqtt.warning("problem %s", text)


app = App("diary", [Diary])
