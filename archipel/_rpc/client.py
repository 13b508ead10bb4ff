"""Calls to services in other processes: one pooled aiohttp session per process, and proxies
that expose exactly a service's ``@rpc`` methods with the same signatures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from ssl import SSLContext
from typing import Any

import aiohttp
import msgspec

from .. import _context
from .._chain import Interceptor, Invocation, Next, Site, compose
from .._errors import ArchipelError, DeadlineExceeded, RemoteError, Unavailable, declared_error
from .._model import MethodSpec, ServiceSpec
from .._proxy import make_proxy
from .._security.tokens import Signer
from .membership import Membership

DEFAULT_TIMEOUT = 30.0  # only when no deadline interceptor set one
# Below uvicorn's keep-alive (5 s): the client drops an idle connection before the server
# closes it, so a call never goes out on a connection the server is closing.
KEEPALIVE = 4.0
# A replica that takes longer than this to accept a connection is taken for gone (a host cut off
# the network drops the SYN): the call moves to another replica while its deadline still allows.
CONNECT_TIMEOUT = 1.0
_NO_GUARD = contextlib.nullcontext()


class _ErrorBody(msgspec.Struct):
    kind: str = "internal"
    message: str = ""
    details: Any = None


class _ErrorResponse(msgspec.Struct):
    error: _ErrorBody


_error_decoder = msgspec.json.Decoder(_ErrorResponse)


class HttpTransport:
    """Pooled HTTP client for RPC. ``urls`` maps a service name to the base URLs of its replicas;
    ``membership`` (``_rpc.membership``), when given, keeps that list current and healthy.

    A proxy's method runs the interceptor chain of its call site; the chain ends in ``_send``,
    one attempt to one replica: ``invocation.endpoint`` when an interceptor chose it (the
    breaker does), else the next replica in rotation, round-robin. Retries, deadlines and
    breakers are interceptors, never here.
    """

    def __init__(
        self,
        urls: Mapping[str, Sequence[str]],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        pool_size: int = 100,
        keepalive: float = KEEPALIVE,
        signer: Signer | None = None,
        ssl: SSLContext | None = None,
        membership: Membership | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.membership = membership or Membership(urls, interval=0)  # 0: a fixed list, no probes
        self.membership.on_unresponsive(self._give_up_on)
        self._waiting: dict[str, set[asyncio.Timeout]] = collections.defaultdict(set)  # calls in flight
        self._turns: dict[str, Iterator[int]] = collections.defaultdict(itertools.count)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._pool_size = pool_size
        self._keepalive = keepalive
        self._signer = signer  # credentials of the calls (None: unsigned, for open servers)
        self._ssl = ssl  # verifies https:// replicas (a private CA); None: the system's store
        self._session: aiohttp.ClientSession | None = None

    def endpoints(self, service: str) -> list[str]:
        """The base URLs of ``service``'s replicas in rotation (empty when unknown)."""
        return self.membership.healthy(service)

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size,
                ttl_dns_cache=300,
                keepalive_timeout=self._keepalive,
                ssl=self._ssl if self._ssl is not None else True,
            )
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"])
            self.membership.start(self._session)

    async def close(self) -> None:
        await self.membership.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def proxy(
        self,
        spec: ServiceSpec,
        *,
        caller: str = "",
        interceptors: Sequence[Interceptor] = (),
        optional: bool = False,
    ) -> Any:
        """An object with ``spec``'s rpc methods, each a coroutine that calls over HTTP through
        the interceptor chain of its site (``caller`` calling ``spec.name.method``)."""
        if not self.membership.endpoints(spec.name):
            raise Unavailable(f"no address known for service {spec.name!r}")

        def chain(method: MethodSpec) -> tuple[Site, Next]:
            site = Site(
                "call",
                spec.name,
                method.name,
                caller,
                remote=True,
                idempotent=method.idempotent,
                optional=optional,
            )
            return site, compose(site, interceptors, self._terminal(method))

        return make_proxy(spec, chain)

    def _terminal(self, spec: MethodSpec) -> Next:
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(spec.returns)
        path = f"/{spec.service}/{spec.name}"

        async def send(invocation: Invocation) -> Any:
            return await self._send(invocation, spec, path, decoder)

        return send

    async def _send(
        self, invocation: Invocation, spec: MethodSpec, path: str, decoder: msgspec.json.Decoder[Any]
    ) -> Any:
        if self._session is None:
            await self.start()
        assert self._session is not None
        deadline = invocation.deadline
        timeout = self._timeout if deadline is None else deadline - time.monotonic()
        if timeout <= 0:
            raise DeadlineExceeded(f"{spec.qualname}: the deadline passed before the call")
        base = invocation.endpoint or self._next_replica(spec.service, invocation.notes.get("avoid", ()))
        invocation.endpoint = base
        headers = {
            "content-type": "application/json",
            # The client span's context when tracing made one (the server's span is its child).
            _context.TRACEPARENT: invocation.notes.get(_context.TRACEPARENT) or _context.child_traceparent(),
            _context.TIMEOUT_HEADER: str(max(1, int(timeout * 1000))),
        }
        if self._signer is not None:
            credential = self._signer.header(invocation.site.caller, spec.service)
            if credential is not None:
                headers["authorization"] = credential
        body = msgspec.json.encode(invocation.arguments)
        url = base + path
        # Fired by _give_up_on when the replica stops answering probes; without probes (a fixed
        # list of peers) nothing can fire it, so the call pays for no guard.
        guard = asyncio.timeout(None) if self.membership.probing else None
        try:
            async with guard or _NO_GUARD:
                if guard is not None:
                    self._waiting[base].add(guard)
                async with self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=self._connect_timeout),
                ) as response:
                    payload = await response.read()
                    status = response.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection: the request was never sent, and this replica leaves the rotation.
            self.membership.mark_down(base)
            raise Unavailable(f"{spec.qualname}: cannot connect to {base}: {exc}", never_sent=True) from exc
        except TimeoutError:
            if guard is not None and guard.expired():
                raise Unavailable(f"{spec.qualname}: {base} stopped answering its health probes") from None
            raise DeadlineExceeded(f"{spec.qualname} did not answer within {timeout:.3g}s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{spec.qualname}: {base} failed: {exc}") from exc
        finally:
            if guard is not None:
                self._waiting[base].discard(guard)
        if status == 200:
            try:
                return decoder.decode(payload)
            except msgspec.DecodeError as exc:  # ValidationError too: an answer of another version
                raise RemoteError(
                    f"{spec.qualname}: the answer does not match {spec.returns!r}: {exc}",
                    service=spec.service,
                    method=spec.name,
                    remote_kind="invalid_response",
                    http_status=502,
                ) from exc
        raise _remote_error(spec, status, payload)

    def _give_up_on(self, base: str) -> None:
        """Stop waiting for the calls in flight to ``base``: each fails with Unavailable, which
        the retry policy retries on another replica when the method is idempotent."""
        now = asyncio.get_running_loop().time()
        for guard in list(self._waiting.get(base, ())):
            guard.reschedule(now)

    def _next_replica(self, service: str, avoid: Sequence[str] = ()) -> str:
        replicas = self.membership.healthy(service)
        if not replicas:
            raise Unavailable(f"no replica of {service!r} is known", never_sent=True)
        if avoid:
            replicas = [url for url in replicas if url not in avoid] or replicas
        return replicas[next(self._turns[service]) % len(replicas)]


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
