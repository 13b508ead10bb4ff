"""Proxies: objects that expose exactly a service's ``@rpc`` methods, with the same signatures,
each running the interceptor chain of its call site. Remote dependencies are proxies whose chain
ends in an HTTP request; local ones are proxies only when some interceptor has work there.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ._chain import Invocation, Next, Site
from ._model import MethodSpec, ServiceSpec
from ._rpc.coalesce import coalesce


def make_proxy(spec: ServiceSpec, chain: Callable[[MethodSpec], tuple[Site, Next]]) -> Any:
    """An object exposing exactly ``spec``'s rpc methods with their signatures; each builds an
    :class:`Invocation` and runs ``chain(method)``."""
    proxy_type = type(f"{spec.cls.__name__}Proxy", (), {"__repr__": lambda self: f"<proxy {spec.name}>"})
    proxy = proxy_type()
    sites = {name: chain(method) for name, method in spec.methods.items()}
    for name, method in spec.methods.items():
        site, call = sites[name]
        # A remote call of a method with a batch method joins the concurrent ones (_rpc/coalesce.py).
        call = coalesce(method, site, call, sites)
        setattr(proxy, name, _proxy_method(method, getattr(spec.cls, name), site, call))
    return proxy


def _proxy_method(
    spec: MethodSpec, original: Callable[..., Any], site: Site, chain: Next
) -> Callable[..., Awaitable[Any]]:
    signature = inspect.signature(original)
    names = [p.name for p in spec.params]

    async def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) == len(names) and not kwargs:
            arguments = dict(zip(names, args, strict=True))
        else:
            try:
                bound = signature.bind(None, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{spec.qualname}(): {exc}") from None
            arguments = dict(list(bound.arguments.items())[1:])
        return await chain(Invocation(site, arguments))

    call.__name__ = spec.name
    call.__qualname__ = f"{spec.service}.{spec.name}"
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:]
    )
    call.__doc__ = original.__doc__
    return call
