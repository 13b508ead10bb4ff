"""Every process's log lines: who wrote them (service, process, replica) and for which trace.

Workers and ``archipel run`` itself call :func:`configure_logging` once. Two formats:

- ``text`` (the default), for people::

    2026-11-30T07:40:01.123Z INFO    checkout#1 app.orders: order o-7 placed trace=4bf92f35

- ``json``, one object a line, for machines: ``time`` (RFC 3339, UTC), ``level``, ``logger``,
  ``message``, ``service`` (the process's services, comma-separated), ``process``, ``replica``,
  ``trace_id`` and ``span_id`` (null outside a call or event), and ``exc`` (the traceback) when
  an exception was logged.

The trace comes from ``_context.current_traceparent()``: the ids on the wire, read when the line
is written, in the task that writes it. ``ARCHIPEL_LOG_LEVEL`` sets the level (default INFO).
Below DEBUG the MQTT client's and uvicorn's routine lines (reconnected, server started, access
lines) are held to WARNING; ``ARCHIPEL_LOG_QUIET=0`` lets them through at the chosen level.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Final

import msgspec

from .._context import current_traceparent

FORMAT_VAR: Final = "ARCHIPEL_LOG_FORMAT"
LEVEL_VAR: Final = "ARCHIPEL_LOG_LEVEL"
QUIET_VAR: Final = "ARCHIPEL_LOG_QUIET"
FORMATS: Final = ("text", "json")
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Loggers whose INFO lines are routine: held to WARNING unless asked for (see the module doc).
CHATTY: Final = ("archipel.mqtt", "uvicorn", "uvicorn.error", "uvicorn.access")
UVICORN: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")


def parse_format(text: str) -> str:
    """``text`` or ``json``; anything else is a ValueError naming the choices."""
    value = text.strip().lower()
    if value not in FORMATS:
        raise ValueError(f"expected one of {', '.join(FORMATS)}")
    return value


def parse_level(text: str) -> str:
    """A level name (any case) or its number, as its upper-case name."""
    value = text.strip().upper()
    if value.isdigit() and logging.getLevelName(int(value)) in LEVELS:
        return str(logging.getLevelName(int(value)))
    if value == "WARN":
        return "WARNING"
    if value not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}")
    return value


def parse_quiet(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1 or 0")


class LogSettings(msgspec.Struct, frozen=True, kw_only=True):
    format: str = "text"
    level: str = "INFO"
    quiet: bool = True


class BadLogSetting(ValueError):
    """A logging variable is malformed; the message names it and what it accepts."""


def log_settings(env: Mapping[str, str]) -> LogSettings:
    """The settings ``ARCHIPEL_LOG_FORMAT``, ``_LEVEL`` and ``_QUIET`` in ``env`` describe."""
    values: dict[str, object] = {}
    for variable, field, parse in (
        (FORMAT_VAR, "format", parse_format),
        (LEVEL_VAR, "level", parse_level),
        (QUIET_VAR, "quiet", parse_quiet),
    ):
        raw = env.get(variable, "")
        if raw.strip():
            try:
                values[field] = parse(raw)
            except ValueError as exc:
                raise BadLogSetting(f"{variable}={raw!r}: {exc}") from None
    return LogSettings(**values)  # type: ignore[arg-type]


class _Clock:
    """RFC 3339 UTC timestamps; the part up to the second is made once a second, not per line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, created: float, digits: int) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        fraction = int((created - second) * 10**digits)
        return f"{self._prefix}.{fraction:0{digits}d}Z"


class TextFormatter(logging.Formatter):
    """``time level process#replica logger: message [trace=8 hex]``, then any traceback."""

    def __init__(self, process: str, replica: int = 0) -> None:
        super().__init__()
        self._who = process if not replica else f"{process}#{replica}"
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self._clock.stamp(record.created, 3)} {record.levelname:<7} {self._who} "
            f"{record.name}: {record.getMessage()}"
        )
        traceparent = current_traceparent()
        if traceparent is not None:
            line += f" trace={traceparent[3:11]}"  # "00-" then the trace id's first 8 hex
        if record.exc_info or record.exc_text or record.stack_info:
            line += "\n" + _exception(self, record)
        return line


class JsonLine(msgspec.Struct):
    time: str
    level: str
    logger: str
    message: str
    service: str
    process: str
    replica: int
    trace_id: str | None
    span_id: str | None
    exc: str | msgspec.UnsetType = msgspec.UNSET  # left out when nothing was raised


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module doc), encoded by msgspec from a small Struct."""

    def __init__(self, services: str, process: str, replica: int = 0) -> None:
        super().__init__()
        self._services, self._process, self._replica = services, process, replica
        self._clock = _Clock()
        self._encode = msgspec.json.Encoder().encode

    def format(self, record: logging.LogRecord) -> str:
        traceparent = current_traceparent()
        line = JsonLine(
            time=self._clock.stamp(record.created, 6),
            level=record.levelname,
            logger=record.name,
            message=record.getMessage(),
            service=self._services,
            process=self._process,
            replica=self._replica,
            trace_id=traceparent[3:35] if traceparent else None,
            span_id=traceparent[36:52] if traceparent else None,
        )
        if record.exc_info or record.exc_text or record.stack_info:
            line.exc = _exception(self, record)
        return self._encode(line).decode()


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [record.exc_text or ""]
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(part for part in parts if part)


_HANDLER_NAME = "archipel"


def configure_logging(
    settings: LogSettings,
    *,
    process: str,
    services: tuple[str, ...] | list[str] = (),
    replica: int = 0,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every logger's lines to ``stream`` (stderr) as ``settings`` say. Called again, it
    replaces its own handler, not others'."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter(",".join(services) or process, process, replica))
    else:
        handler.setFormatter(TextFormatter(process, replica))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    quiet = settings.quiet and settings.level != "DEBUG"
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    return handler


def adopt_uvicorn(settings: LogSettings) -> None:
    """Route uvicorn's lines through the handler above: ``uvicorn.Config`` installs its own
    handlers and levels when it is made, so this runs after it."""
    quiet = settings.quiet and settings.level != "DEBUG"
    for name in UVICORN:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING if quiet else logging.NOTSET)
