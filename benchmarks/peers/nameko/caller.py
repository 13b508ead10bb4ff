"""The Nameko caller of benchmarks/remote_hop.py, the same JSON-lines protocol as the others.

    python caller.py --broker URL --calls N --warmup W --concurrency C --per-caller K

Each concurrent caller is a green thread with its own ``ClusterRpcProxy`` (one reply queue each).
"""

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from nameko.exceptions import RpcTimeout  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

AMOUNT = {"currency": "EUR", "units": 1234, "nanos": 5}
state = {"errors": 0, "first_error": None}


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def call(proxy) -> None:
    try:
        proxy.currency.convert(AMOUNT, "USD")
    except Exception as error:  # counted, as every caller of the benchmark does
        state["errors"] += 1
        if state["first_error"] is None:
            state["first_error"] = repr(error)


def wait_for_service(config: dict, seconds: float) -> None:
    """Until a call is answered: a call sent before the service declared its queue is dropped."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with ClusterRpcProxy(config, timeout=1) as proxy:
                proxy.currency.convert(AMOUNT, "USD")
                return
        except (RpcTimeout, OSError, Exception):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--calls", "--warmup", "--concurrency", "--per-caller"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--broker", required=True)
    args = parser.parse_args()
    config = {"AMQP_URI": args.broker}
    try:
        wait_for_service(config, 30)
    except Exception as error:
        emit({"event": "failed", "error": repr(error)})
        sys.exit(1)
    with ClusterRpcProxy(config, timeout=10) as proxy:
        for _ in range(args.warmup):
            call(proxy)
        state.update(errors=0)
        samples = []
        for _ in range(args.calls):
            started = time.perf_counter_ns()
            call(proxy)
            samples.append((time.perf_counter_ns() - started) / 1e6)
    emit({"event": "sequential", "samples_ms": samples, **state})
    sys.stdin.readline()  # the benchmark reads the server's CPU, then says go
    proxies = [ClusterRpcProxy(config, timeout=10) for _ in range(args.concurrency)]
    started_proxies = [p.start() for p in proxies]
    state.update(errors=0)

    def caller(proxy) -> None:
        for _ in range(args.per_caller):
            call(proxy)

    cpu = time.process_time()
    started = time.perf_counter()
    pool = eventlet.GreenPool(args.concurrency)
    for proxy in started_proxies:
        pool.spawn(caller, proxy)
    pool.waitall()
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu
    for proxy in proxies:
        proxy.stop()
    emit(
        {
            "event": "concurrent",
            "calls": args.concurrency * args.per_caller,
            "elapsed_s": elapsed,
            "cpu_s": cpu_s,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **state,
        }
    )


if __name__ == "__main__":
    main()
