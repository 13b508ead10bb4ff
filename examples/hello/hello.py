"""Hello, microservices: three services, one RPC chain and one event.

    client --POST /greeter/greet--> Greeter --normalize()--> Names
                                       |
                                       +--emit(Greeted) on "hello/greetings/sent"--> Guestbook

Run it as one process or as three without changing a line here:

    archipel run examples/hello/hello.py --mode monolith
    archipel run examples/hello/hello.py --mode microservices

The code never says where a service runs. That is decided when the app is started (a command
line option, or ``archipel.toml``), so the same classes can be measured both ways.
"""

from __future__ import annotations

import uuid

from archipel import App, Event, Service, Struct, on, rpc

# --- Data -----------------------------------------------------------------------------------
# Arguments, results and events are typed msgspec Structs (or plain types such as str and
# list[str]). The annotations are the contract: in microservices mode they are turned into
# JSON schemas (see /openapi.json) and every payload is checked against them when it crosses a
# process boundary, so a bad request gets a 422 naming the field instead of a crash.


class Greeting(Struct):
    """What ``Greeter.greet`` returns."""

    message: str
    name: str
    greeting_id: str


class Greeted(Event, topic="greetings/sent"):
    """An event: a fact that already happened, announced to whoever cares.

    The emitter does not know who listens. On the wire the topic is prefixed with the app
    name: ``hello/greetings/sent``.
    """

    greeting_id: str  # a unique id lets handlers recognise an event they have already seen
    name: str


# --- Services -------------------------------------------------------------------------------
# A service is a class with a few methods. ``@rpc`` methods can be called by other services
# (over HTTP as ``POST /{service}/{method}``); ``@on(Event)`` methods react to events. A service
# keeps its state to itself: other services only see its methods.
#
# An ``@rpc`` method is internal unless marked ``public=True``: only the services that declare
# its service as a dependency may call it, each call carrying a short-lived signed credential
# (Archipel adds and checks it; a curl without one gets 401). A monolith does not serve internal
# methods over HTTP at all. Public methods are the app's front door, open to anyone.


class Names(Service):
    """The end of the RPC chain: no dependencies, no events."""

    # idempotent=True promises that calling twice has the same effect as calling once. A caller
    # may then retry the call on another replica after a lost connection; a non-idempotent call
    # (say, "charge this card") is never retried automatically.
    @rpc(idempotent=True)
    async def normalize(self, name: str) -> str:
        """Trim and capitalise a name: ``"  ada "`` -> ``"Ada"``."""
        return " ".join(part.capitalize() for part in name.split()) or "Stranger"


class Greeter(Service, emits=[Greeted]):
    """Calls ``Names`` synchronously, then announces the greeting asynchronously.

    ``emits=[Greeted]`` declares the events it publishes: the broker lets Greeter publish on
    ``hello/greetings/sent`` and nobody else, and Guestbook drops a Greeted that claims another
    source.
    """

    # A dependency is declared as an annotation, never constructed here. At start-up the runtime
    # fills it in with whatever fits the deployment:
    #   - monolith: the Names instance itself, so ``await self.names.normalize(...)`` is a plain
    #     method call (no serialisation, ~0.2 us);
    #   - microservices: a proxy with the same methods that sends ``POST /names/normalize`` to
    #     the process running Names (JSON over a pooled HTTP connection, hundreds of us).
    # Because the annotation names the real class, editors and type checkers see the same
    # signatures in both cases.
    names: Names

    @rpc(public=True)  # the app's entry point: anyone may ask for a greeting
    async def greet(self, name: str) -> Greeting:
        """Greet someone, and tell the rest of the system that it happened."""
        normalized = await self.names.normalize(name)
        greeting = Greeting(message=f"Hello, {normalized}!", name=normalized, greeting_id=uuid.uuid4().hex)
        # emit() returns once the event bus has accepted the event, before any handler runs:
        #   - monolith: an in-process bus schedules the handlers as tasks in the same process;
        #   - microservices: the event is published to the MQTT broker with QoS 1, and emit()
        #     returns when the broker has acknowledged it (so it will not be lost on our side).
        # Greeter does not wait for the Guestbook, and does not fail if the Guestbook is down:
        # the broker keeps the event until the Guestbook is back.
        await self.emit(Greeted(greeting_id=greeting.greeting_id, name=normalized))
        return greeting


class Guestbook(Service):
    """Listens to ``Greeted`` events and remembers who was greeted."""

    def __init__(self) -> None:
        # In memory, so one process's worth of state: enough for an example. A real service
        # would use a database, and would then see the same events after a restart.
        self._entries: dict[str, str] = {}

    # Delivery is at-least-once: QoS 1 means the broker resends an event until the subscriber
    # acknowledges it, and Archipel acknowledges only after this handler returns. If the process
    # dies (or the handler raises and is retried) after doing its work but before the ack, the
    # same event arrives again. So the handler must be idempotent: keyed by greeting_id, a
    # duplicate overwrites its own entry instead of adding a second one.
    #
    # In microservices mode the Guestbook subscribes through a shared subscription
    # ($share/hello.guestbook:greetings.sent/hello/greetings/sent): each *service* gets every event, while the
    # replicas of one service share them, so running two Guestbooks does not record twice.
    @on(Greeted)
    async def record(self, event: Greeted) -> None:
        self._entries[event.greeting_id] = event.name

    @rpc(idempotent=True, public=True)
    async def entries(self) -> list[str]:
        """Names greeted so far, oldest first (one entry per greeting)."""
        return list(self._entries.values())


# The app: a name (used for topics and metrics) and its services, in any order (they are started
# dependencies first). Placement - which of these share a process - is not here; it is chosen by
# `archipel run --mode ...` or archipel.toml. Greeter is listed first so that in microservices
# mode it gets the first port (8000), the one the README's curl commands use.
app = App("hello", [Greeter, Names, Guestbook])
