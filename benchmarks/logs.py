"""What a log line costs: archipel's text and JSON formats next to the standard library's.

Each variant logs ``logger.info("order %s placed", i)`` through a ``StreamHandler`` into a stream
that drops what it is given (the cost of the terminal or pipe is the same for all), inside a
call (a traceparent in the context, as in a request handler). Variants:

- **stdlib**: ``logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")``;
- **archipel text**: ``_telemetry.logs.TextFormatter`` (time, level, process#replica, logger,
  message, short trace id);
- **archipel json**: ``_telemetry.logs.JsonFormatter`` (a msgspec Struct, encoded by msgspec);
- **json.dumps dict**: the same fields as a dict through ``json.dumps``, for comparison.

Best of ``--repeats`` runs of ``--lines`` lines each, the variants interleaved.

    python benchmarks/logs.py [--lines 100000] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable

from archipel._context import current_traceparent, set_traceparent
from archipel._telemetry.logs import JsonFormatter, TextFormatter


class Dropped:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class DictJsonFormatter(logging.Formatter):
    """The straightforward way: a dict per line, ``json.dumps``."""

    def format(self, record: logging.LogRecord) -> str:
        traceparent = current_traceparent()
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
                "service": "checkout",
                "process": "checkout",
                "replica": 1,
                "trace_id": traceparent[3:35] if traceparent else None,
                "span_id": traceparent[36:52] if traceparent else None,
            }
        )


VARIANTS: dict[str, Callable[[], logging.Formatter]] = {
    "stdlib": lambda: logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"),
    "archipel text": lambda: TextFormatter("checkout", 1),
    "archipel json": lambda: JsonFormatter("checkout", "checkout", 1),
    "json.dumps dict": DictJsonFormatter,
}


def logger_for(name: str, formatter: logging.Formatter) -> logging.Logger:
    logger = logging.getLogger(f"bench.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(Dropped())
    handler.setFormatter(formatter)
    logger.handlers[:] = [handler]
    return logger


def seconds_per_line(logger: logging.Logger, lines: int) -> float:
    info = logger.info
    start = time.perf_counter()
    for i in range(lines):
        info("order %s placed", i)
    return (time.perf_counter() - start) / lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few lines, to check it runs")
    args = parser.parse_args()
    lines, repeats = (2_000, 1) if args.quick else (args.lines, args.repeats)
    set_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")  # inside a call
    loggers = {name: logger_for(name.replace(" ", "_"), make()) for name, make in VARIANTS.items()}
    best = dict.fromkeys(loggers, float("inf"))
    for _ in range(repeats):
        for name, logger in loggers.items():
            best[name] = min(best[name], seconds_per_line(logger, lines))
    stdlib = best["stdlib"]
    print(f"{lines} lines, best of {repeats}, inside a call (a traceparent in the context)\n")
    print("| variant | µs per line | over stdlib (µs) | ratio to stdlib |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e6:.2f} | {(seconds - stdlib) * 1e6:+.2f} | {seconds / stdlib:.2f}x |")
    print(f"\narchipel json / json.dumps dict: {best['archipel json'] / best['json.dumps dict']:.2f}x")


if __name__ == "__main__":
    main()
