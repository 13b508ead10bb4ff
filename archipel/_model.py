"""The programming model: services, RPC methods, events and their handlers.

Pure Python, no I/O. A service class is read once into a :class:`ServiceSpec`; everything
else (runtime, transports, OpenAPI) works from the specs, never from the classes directly.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, overload

import msgspec

from ._errors import DefinitionError
from ._resilience.policies import check_value

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
E = TypeVar("E", bound="Event")

_RPC_MARK = "__archipel_rpc__"
DEFAULT_MAX_BATCH = 100  # items per call of a batch method (``@rpc(batch=...)``)
_ON_MARK = "__archipel_on__"


class _EventMeta(msgspec.StructMeta):
    """Accepts ``topic=`` as a class keyword, next to msgspec's own (``frozen=``, ``kw_only=``...)."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        topic: str | None = None,
        **kwargs: Any,
    ) -> Any:
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        if topic is not None:
            _check_topic(name, topic)
            setattr(cls, "__topic__", topic)  # noqa: B010 - a ClassVar set on the new class
        return cls


def _check_topic(event_name: str, topic: str) -> None:
    if not topic or topic.startswith("/") or any(c in topic for c in "#+$") or "//" in topic:
        raise DefinitionError(
            f"event {event_name}: topic {topic!r} must be a non-empty MQTT topic without wildcards, '$' "
            "or a leading '/'"
        )


class Event(msgspec.Struct, metaclass=_EventMeta):
    """Base of event types: ``class OrderPlaced(Event, topic="orders/placed"): ...``."""

    __topic__: ClassVar[str] = ""

    if typing.TYPE_CHECKING:  # tells type checkers that ``topic=`` is a valid class keyword

        def __init_subclass__(cls, *, topic: str | None = None, **kwargs: Any) -> None: ...


@dataclass(frozen=True)
class RpcOptions:
    idempotent: bool = False
    # Served to anyone; otherwise only to services holding a credential (archipel._security).
    public: bool = False
    # Resilience policies of the method; None leaves the configured default
    # (archipel._resilience.policies, where configuration overrides them).
    timeout: float | None = None
    max_timeout: float | None = None
    retries: int | None = None
    backoff: float | None = None
    # The method of the same service that takes a list of this one's items: concurrent remote
    # calls of this one are sent as calls of it, ``max_batch`` items at most (_rpc/coalesce.py).
    batch: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH

    @property
    def policy(self) -> dict[str, Any]:
        """The policies this decorator sets, by key."""
        return {
            key: value
            for key in ("timeout", "max_timeout", "retries", "backoff")
            if (value := getattr(self, key)) is not None
        }


@overload
def rpc(func: F, /) -> F: ...
@overload
def rpc(
    *,
    idempotent: bool = False,
    timeout: float | None = None,
    max_timeout: float | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    public: bool = False,
    batch: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Callable[[F], F]: ...
def rpc(
    func: F | None = None,
    /,
    *,
    idempotent: bool = False,
    timeout: float | None = None,
    max_timeout: float | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    public: bool = False,
    batch: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> F | Callable[[F], F]:
    """Mark an ``async`` method as callable by other services and over ``POST /{service}/{method}``.

    ``idempotent=True`` promises that running the call twice has the effect of running it once,
    so callers may retry it after a timeout or a lost connection.

    ``timeout`` (seconds a call may take, and the default deadline of a request that sets none),
    ``max_timeout`` (the longest deadline a caller may ask), ``retries`` and ``backoff`` set the
    method's resilience policies; ``[policies.service]`` in the configuration overrides them.

    ``public=True`` serves the method to anyone who reaches the process, in every topology.
    Otherwise it is internal: only the services that declare this one as a dependency may call it,
    each call carrying a signed credential, and a monolith does not serve it over HTTP at all.

    ``batch="convert_all"`` names a method of the same service taking a list of this one's items
    (``convert_all(amounts: list[Amount], to_code) -> list[Money]`` for ``convert(amount: Amount,
    to_code) -> Money``): concurrent remote calls of this method with equal other arguments are
    sent as one call of it, ``max_batch`` items at most. A local call stays a plain call.
    """
    options = RpcOptions(idempotent, public, timeout, max_timeout, retries, backoff, batch, max_batch)

    def mark(f: F) -> F:
        for key, value in options.policy.items():
            problem = check_value(key, value)
            if problem is not None:
                raise DefinitionError(f"{f.__qualname__}: @rpc({key}=...): {problem}")
        if batch is not None and not (isinstance(batch, str) and batch.isidentifier()):
            raise DefinitionError(f"{f.__qualname__}: @rpc(batch=...) names a method, got {batch!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise DefinitionError(
                f"{f.__qualname__}: @rpc(max_batch=...) must be an integer >= 1, got {max_batch!r}"
            )
        setattr(f, _RPC_MARK, options)
        return f

    return mark(func) if func is not None else mark


def on(event_type: type[E]) -> Callable[[F], F]:
    """Mark an ``async`` method as a handler of ``event_type``; it receives each event at least once."""
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise DefinitionError(f"@on expects an Event subclass, got {event_type!r}")

    def mark(f: F) -> F:
        setattr(f, _ON_MARK, event_type)
        return f

    return mark


class Optional:
    """Marks a dependency as optional; see :func:`optional`."""

    def __init__(self, fallbacks: dict[str, Any]) -> None:
        self.fallbacks = fallbacks

    def __repr__(self) -> str:
        return f"optional({', '.join(f'{k}={v!r}' for k, v in self.fallbacks.items())})"


def optional(**fallbacks: Any) -> Any:
    """Declare a dependency optional, with what each method gives when it is unavailable::

        class Frontend(Service):
            ads: Ads = optional(get_ads=[])     # no ads rather than no page

    When the dependency cannot answer (unreachable, too slow, breaker open, overloaded), the
    call returns the fallback instead of raising; errors the dependency raises on purpose
    (``NotFound``, ``InvalidArgument``...) still reach the caller. A fallback is a value of the
    method's return type, or a callable taking the method's arguments and returning one. Methods
    without a fallback raise as usual. Checked at start-up.
    """
    return Optional(fallbacks)


class Service:
    """Base of services. Subclass it, add ``@rpc`` methods, ``@on(Event)`` handlers, and
    dependencies as annotations naming other service classes.

    Class keywords: ``name=`` sets the service's name on the wire (default: the class name in
    lower case); ``emits=[OrderPlaced, ...]`` declares the events it publishes. Only declared
    events may be emitted: the declaration is what the broker's access list and the consumers'
    check of an event's source are made from.

    The routes of :meth:`asgi_app` are the service's public HTTP surface, served to anyone.
    """

    __service_name__: ClassVar[str] = ""
    __service_emits__: ClassVar[tuple[type[Event], ...]] = ()
    _archipel_emit: Callable[[Event], Awaitable[None]] | None = None
    _archipel_store: Any = None  # the service's state store, set by the runtime (see collection())

    def __init_subclass__(
        cls, name: str | None = None, emits: Sequence[type[Event]] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.__service_name__ = name or cls.__name__.lower()
        for event_type in emits:
            if not (isinstance(event_type, type) and issubclass(event_type, Event)) or not getattr(
                event_type, "__topic__", ""
            ):
                raise DefinitionError(
                    f"{cls.__name__}: emits= takes Event subclasses with a topic, got {event_type!r}"
                )
        # Inherited declarations add up: a subclass emits what its bases emit.
        inherited = tuple(e for base in cls.__mro__[1:] for e in getattr(base, "__service_emits__", ()))
        cls.__service_emits__ = tuple(dict.fromkeys((*inherited, *emits)))

    async def emit(self, event: Event) -> None:
        """Publish ``event`` to every service that handles its type. Returns once it is handed
        to the event bus (in microservices: acknowledged by the broker), before handlers run."""
        if self._archipel_emit is None:
            raise RuntimeError(f"{type(self).__name__}.emit: the service is not running in an app")
        await self._archipel_emit(event)

    async def start(self) -> None:
        """Called once when the service starts, after its dependencies have started."""

    async def stop(self) -> None:
        """Called once when the service stops, before its dependencies stop."""

    def asgi_app(self) -> Any:
        """Return an ASGI app serving this service's own public HTTP routes, or None."""
        return None


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    default: Any = msgspec.NODEFAULT


@dataclass(frozen=True)
class Batching:
    """How calls of a method are coalesced: ``item`` of each call goes into the list parameter
    ``items`` of ``method``, whose answer has one item per call, in order."""

    method: str
    item: str
    items: str
    max_batch: int


@dataclass(frozen=True)
class MethodSpec:
    service: str
    name: str
    params: tuple[Param, ...]
    returns: Any
    idempotent: bool
    arguments: type[msgspec.Struct]  # a Struct with one field per parameter: the wire schema
    options: RpcOptions = RpcOptions()
    batch: Batching | None = None  # checked against the batch method by describe()

    @property
    def qualname(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def public(self) -> bool:
        return self.options.public

    @property
    def policy(self) -> dict[str, Any]:
        """The resilience policies ``@rpc(...)`` sets on this method, by key."""
        return self.options.policy


@dataclass(frozen=True)
class HandlerSpec:
    service: str
    name: str
    event_type: type[Event]

    @property
    def topic(self) -> str:
        return self.event_type.__topic__


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    cls: type[Service]
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    handlers: tuple[HandlerSpec, ...] = ()
    emits: tuple[type[Event], ...] = ()
    dependencies: dict[str, type[Service]] = field(default_factory=dict)
    # optional dependencies by service name: method name -> fallback (value or callable)
    optional: dict[str, dict[str, Any]] = field(default_factory=dict)


def describe(cls: type[Service]) -> ServiceSpec:
    """Read a service class into a spec, or raise DefinitionError naming the class and method."""
    if not (isinstance(cls, type) and issubclass(cls, Service)) or cls is Service:
        raise DefinitionError(f"{cls!r} is not a Service subclass")
    cached: ServiceSpec | None = cls.__dict__.get("__archipel_spec__")
    if cached is not None:
        return cached
    name = cls.__service_name__
    hints = _hints(cls, cls.__name__)
    dependencies = {
        attr: hint for attr, hint in hints.items() if isinstance(hint, type) and issubclass(hint, Service)
    }
    methods: dict[str, MethodSpec] = {}
    handlers: list[HandlerSpec] = []
    for attr in dir(cls):
        member = getattr(cls, attr, None)
        if member is None or not callable(member):
            continue
        options: RpcOptions | None = getattr(member, _RPC_MARK, None)
        event_type: type[Event] | None = getattr(member, _ON_MARK, None)
        if options is not None:
            methods[attr] = _method_spec(cls, name, attr, member, options)
        if event_type is not None:
            handlers.append(_handler_spec(cls, name, attr, member, event_type))
    for attr, method in methods.items():
        if method.options.batch is not None:
            methods[attr] = dataclasses.replace(method, batch=_batching(cls, method, methods))
    optionals = {
        dep.__service_name__: marker.fallbacks
        for attr, dep in dependencies.items()
        if isinstance(marker := getattr(cls, attr, None), Optional)
    }
    spec = ServiceSpec(name, cls, methods, tuple(handlers), cls.__service_emits__, dependencies, optionals)
    type.__setattr__(cls, "__archipel_spec__", spec)
    return spec


def _hints(obj: Any, where: str) -> dict[str, Any]:
    try:
        # Extras kept: ``Annotated[int, Meta(ge=1)]`` on a parameter reaches the decoder and the schema.
        return typing.get_type_hints(obj, include_extras=True)
    except Exception as exc:
        raise DefinitionError(f"{where}: cannot resolve type annotations: {exc}") from exc


def _where(cls: type, method: str) -> str:
    return f"{cls.__name__}.{method}"


def _method_spec(cls: type, service: str, attr: str, func: Any, options: RpcOptions) -> MethodSpec:
    where = _where(cls, attr)
    if not inspect.iscoroutinefunction(func):
        raise DefinitionError(f"{where}: @rpc methods must be 'async def'")
    hints = _hints(func, where)
    params: list[Param] = []
    for p in list(inspect.signature(func).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise DefinitionError(f"{where}: *args and **kwargs cannot be sent over the wire; name each one")
        if p.name not in hints:
            raise DefinitionError(f"{where}: parameter '{p.name}' has no type annotation")
        default = msgspec.NODEFAULT if p.default is p.empty else p.default
        params.append(Param(p.name, hints[p.name], default))
    if "return" not in hints:
        raise DefinitionError(f"{where}: the return type is not annotated (use '-> None' if nothing)")
    fields = [
        (p.name, p.annotation) if p.default is msgspec.NODEFAULT else (p.name, p.annotation, p.default)
        for p in params
    ]
    try:
        # Unknown arguments are ignored, as unknown fields of a Struct are: during a rolling update
        # a newer caller may pass a keyword parameter this version does not have yet
        # (docs/evolution.md).
        arguments = msgspec.defstruct(f"{cls.__name__}_{attr}_args", fields)
        msgspec.json.schema_components([arguments, hints["return"]])  # raises on types JSON cannot carry
    except (TypeError, ValueError) as exc:
        raise DefinitionError(
            f"{where}: a parameter or the return type cannot travel as JSON: {exc}"
        ) from exc
    return MethodSpec(service, attr, tuple(params), hints["return"], options.idempotent, arguments, options)


def _batching(cls: type, single: MethodSpec, methods: dict[str, MethodSpec]) -> Batching:
    """Check that ``single``'s batch method takes a list of its items and answers a list of its
    answers, with the same other parameters; raise DefinitionError naming what differs."""
    name = single.options.batch
    assert name is not None
    where = f"{_where(cls, single.name)}: @rpc(batch={name!r})"
    batch = methods.get(name)
    if batch is None or name == single.name:
        raise DefinitionError(f"{where}: {cls.__name__} has no other @rpc method named {name!r}")
    ones = {p.name: p for p in single.params}
    many = {p.name: p for p in batch.params}
    # The list parameter: one named differently (amount -> amounts), or the same name as a list.
    only_one = [n for n in ones if n not in many]
    only_many = [n for n in many if n not in ones]
    if len(only_one) > 1 or len(only_many) > 1 or len(only_one) != len(only_many):
        raise DefinitionError(
            f"{where}: {name} must take the parameters of {single.name}, one of them as a list; "
            f"{single.name} has ({', '.join(ones)}), {name} has ({', '.join(many)})"
        )
    if only_one:
        pairs = [(only_one[0], only_many[0])]
    else:
        pairs = [(n, n) for n in ones if _list_of(many[n].annotation) == ones[n].annotation]
        if len(pairs) != 1:
            raise DefinitionError(
                f"{where}: exactly one parameter of {name} must be a list of the same parameter of "
                f"{single.name}; found {len(pairs)}"
            )
    item, items = pairs[0]
    if _list_of(many[items].annotation) != ones[item].annotation:
        raise DefinitionError(
            f"{where}: {name}'s parameter '{items}' must be list[{_type_name(ones[item].annotation)}], "
            f"the type of {single.name}'s '{item}', not {_type_name(many[items].annotation)}"
        )
    for other in ones:
        if other != item and (ones[other].annotation, ones[other].default) != (
            many[other].annotation,
            many[other].default,
        ):
            raise DefinitionError(
                f"{where}: parameter '{other}' differs between {single.name} and {name} "
                "(type or default); the parameters other than the list must be the same"
            )
    if _list_of(batch.returns) != single.returns:
        raise DefinitionError(
            f"{where}: {name} must return list[{_type_name(single.returns)}], not {_type_name(batch.returns)}"
        )
    if batch.idempotent != single.idempotent:
        raise DefinitionError(
            f"{where}: {single.name} and {name} must both be idempotent or both not: a batch is "
            "retried as the calls it carries would be"
        )
    return Batching(name, item, items, single.options.max_batch)


def _list_of(annotation: Any) -> Any:
    """``T`` for ``list[T]``, else a marker equal to nothing."""
    if typing.get_origin(annotation) is list and len(typing.get_args(annotation)) == 1:
        return typing.get_args(annotation)[0]
    return object()


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _handler_spec(cls: type, service: str, attr: str, func: Any, event_type: type[Event]) -> HandlerSpec:
    where = _where(cls, attr)
    if not inspect.iscoroutinefunction(func):
        raise DefinitionError(f"{where}: @on handlers must be 'async def'")
    if not event_type.__topic__:
        raise DefinitionError(
            f"{where}: event {event_type.__name__} has no topic (class X(Event, topic=...))"
        )
    params = list(inspect.signature(func).parameters.values())[1:]
    hints = _hints(func, where)
    if len(params) != 1:
        raise DefinitionError(f"{where}: an @on handler takes exactly one parameter, the event")
    annotation = hints.get(params[0].name)
    if annotation is not event_type:
        raise DefinitionError(
            f"{where}: handles {event_type.__name__} but its parameter '{params[0].name}' is annotated "
            f"{getattr(annotation, '__name__', annotation)!s}"
        )
    return HandlerSpec(service, attr, event_type)
