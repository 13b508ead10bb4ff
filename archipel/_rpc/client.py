"""Calls to services in other processes: one pooled aiohttp session per process, and proxies
that expose exactly a service's ``@rpc`` methods with the same signatures.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import msgspec

from .. import _context
from .._errors import ArchipelError, DeadlineExceeded, RemoteError, Unavailable, declared_error
from .._model import MethodSpec, ServiceSpec

DEFAULT_TIMEOUT = 30.0


class _ErrorBody(msgspec.Struct):
    kind: str = "internal"
    message: str = ""
    details: Any = None


class _ErrorResponse(msgspec.Struct):
    error: _ErrorBody


_error_decoder = msgspec.json.Decoder(_ErrorResponse)


class HttpTransport:
    """Pooled HTTP client for RPC. ``urls`` maps a service name to the base URLs of its replicas;
    calls go round-robin over them."""

    def __init__(
        self, urls: Mapping[str, Sequence[str]], *, timeout: float = DEFAULT_TIMEOUT, pool_size: int = 100
    ) -> None:
        self._urls: dict[str, Iterator[str]] = {
            name: itertools.cycle(list(u)) for name, u in urls.items() if u
        }
        self._timeout = timeout
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def proxy(self, spec: ServiceSpec) -> Any:
        """An object with ``spec``'s rpc methods, each a coroutine that calls over HTTP."""
        if spec.name not in self._urls:
            raise Unavailable(f"no address known for service {spec.name!r}")
        methods = {name: self._method(m, getattr(spec.cls, name)) for name, m in spec.methods.items()}
        proxy_type = type(f"{spec.cls.__name__}Proxy", (), {"__repr__": lambda self: f"<remote {spec.name}>"})
        proxy = proxy_type()
        for name, method in methods.items():
            setattr(proxy, name, method)
        return proxy

    def _method(self, spec: MethodSpec, original: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        signature = inspect.signature(original)
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(spec.returns)
        path = f"/{spec.service}/{spec.name}"
        names = [p.name for p in spec.params]

        async def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) + len(kwargs) == len(names) and not kwargs:
                arguments = dict(zip(names, args, strict=True))
            else:
                bound = signature.bind(None, *args, **kwargs)
                arguments = dict(list(bound.arguments.items())[1:])
            return await self._call(spec, path, msgspec.json.encode(arguments), decoder)

        call.__name__ = spec.name
        call.__qualname__ = f"{spec.service}.{spec.name}"
        call.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[1:]
        )
        call.__doc__ = original.__doc__
        return call

    async def _call(
        self, spec: MethodSpec, path: str, body: bytes, decoder: msgspec.json.Decoder[Any]
    ) -> Any:
        if self._session is None:
            await self.start()
        assert self._session is not None
        remaining = _context.remaining_seconds()
        timeout = self._timeout if remaining is None else min(self._timeout, remaining)
        if timeout <= 0:
            raise DeadlineExceeded(f"{spec.qualname}: the deadline passed before the call")
        headers = {
            "content-type": "application/json",
            _context.TRACEPARENT: _context.child_traceparent(),
            _context.TIMEOUT_HEADER: str(int(timeout * 1000)),
        }
        attempts = 2 if spec.idempotent else 1
        for attempt in range(attempts):
            url = next(self._urls[spec.service]) + path
            try:
                async with self._session.post(
                    url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as response:
                    payload = await response.read()
                    status = response.status
            except TimeoutError:
                raise DeadlineExceeded(f"{spec.qualname} did not answer within {timeout:.3g}s") from None
            except aiohttp.ClientError as exc:
                if attempt + 1 < attempts:
                    continue  # idempotent: another replica (or the same one, reconnected) may answer
                raise Unavailable(f"{spec.qualname}: cannot reach {url}: {exc}") from exc
            if status == 200:
                return decoder.decode(payload)
            if status == 503 and attempt + 1 < attempts:
                continue
            raise _remote_error(spec, status, payload)
        raise AssertionError("unreachable")


def _remote_error(spec: MethodSpec, status: int, payload: bytes) -> ArchipelError:
    try:
        error = _error_decoder.decode(payload).error
    except msgspec.DecodeError:
        error = _ErrorBody("internal", payload[:200].decode("utf-8", "replace"))
    declared = declared_error(error.kind)
    if declared is not None and declared is not RemoteError:
        try:
            return declared(error.message, details=error.details)
        except TypeError:  # a declared error with its own constructor: keep the remote form
            pass
    return RemoteError(
        error.message,
        details=error.details,
        service=spec.service,
        method=spec.name,
        remote_kind=error.kind,
        http_status=status,
    )
