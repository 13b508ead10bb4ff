"""Definition mistakes fail at start-up with a message naming the class and method."""

import pytest

from archipel import App, DefinitionError, Event, Service, Struct, on, rpc
from archipel._model import describe


class Ping(Event, topic="pings"):
    n: int


class Other(Event, topic="others"):
    n: int


def test_rpc_signature_becomes_the_wire_schema() -> None:
    class Pricing(Service):
        @rpc(idempotent=True)
        async def price(self, sku: str, quantity: int = 1) -> int:
            return quantity

    spec = describe(Pricing)
    method = spec.methods["price"]
    assert spec.name == "pricing"
    assert [(p.name, p.annotation) for p in method.params] == [("sku", str), ("quantity", int)]
    assert method.idempotent is True and method.returns is int


def test_service_name_can_be_set() -> None:
    class Thing(Service, name="things"):
        pass

    assert describe(Thing).name == "things"


def test_unannotated_parameter_is_named() -> None:
    class Cart(Service):
        @rpc
        async def add(self, sku, quantity: int) -> None:  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(DefinitionError, match=r"Cart\.add: parameter 'sku' has no type annotation"):
        App("shop", [Cart]).validate()


def test_missing_return_annotation_is_named() -> None:
    class Cart(Service):
        @rpc
        async def add(self, sku: str):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(DefinitionError, match=r"Cart\.add: the return type is not annotated"):
        App("shop", [Cart]).validate()


def test_sync_rpc_is_refused() -> None:
    class Cart(Service):
        @rpc
        def add(self, sku: str) -> None:  # type: ignore[type-var]
            pass

    with pytest.raises(DefinitionError, match=r"Cart\.add: @rpc methods must be 'async def'"):
        App("shop", [Cart]).validate()


def test_parameter_that_cannot_travel_is_named() -> None:
    class Opaque:
        pass

    class Cart(Service):
        @rpc
        async def add(self, callback: Opaque) -> None:
            pass

    with pytest.raises(DefinitionError, match=r"Cart\.add: a parameter or the return type cannot travel"):
        App("shop", [Cart]).validate()


def test_dependency_outside_the_app_is_named() -> None:
    class Stock(Service):
        pass

    class Cart(Service):
        stock: Stock

    with pytest.raises(
        DefinitionError, match=r"Cart\.stock: depends on Stock, which is not a service of app 'shop'"
    ):
        App("shop", [Cart]).validate()


def test_dependency_cycle_is_named() -> None:
    class A(Service):
        b: "B"

    class B(Service):
        a: A

    globals().update(A=A, B=B)  # annotations resolve in module globals
    try:
        with pytest.raises(DefinitionError, match=r"dependency cycle cannot be started: A -> B -> A"):
            App("shop", [A, B]).validate()
    finally:
        del globals()["A"], globals()["B"]


def test_handler_with_wrong_parameter_type_is_named() -> None:
    class Mail(Service):
        @on(Ping)
        async def got(self, event: Other) -> None:
            pass

    with pytest.raises(
        DefinitionError, match=r"Mail\.got: handles Ping but its parameter 'event' is annotated Other"
    ):
        App("shop", [Mail]).validate()


def test_handler_with_two_parameters_is_refused() -> None:
    class Mail(Service):
        @on(Ping)
        async def got(self, event: Ping, extra: int) -> None:
            pass

    with pytest.raises(DefinitionError, match=r"Mail\.got: an @on handler takes exactly one parameter"):
        App("shop", [Mail]).validate()


def test_on_needs_an_event_type() -> None:
    class NotAnEvent(Struct):
        n: int

    with pytest.raises(DefinitionError, match="@on expects an Event subclass"):
        on(NotAnEvent)  # type: ignore[type-var]


@pytest.mark.parametrize("topic", ["", "/lead", "a/#", "a/+/b", "$sys", "a//b"])
def test_invalid_event_topics_are_refused(topic: str) -> None:
    with pytest.raises(DefinitionError, match="topic"):

        class Bad(Event, topic=topic):
            n: int


def test_duplicate_service_names_are_refused() -> None:
    class One(Service, name="same"):
        pass

    class Two(Service, name="same"):
        pass

    with pytest.raises(DefinitionError, match="share the name 'same'"):
        App("shop", [One, Two]).validate()


def test_app_name_is_checked() -> None:
    with pytest.raises(DefinitionError, match="App name 'Not Valid'"):
        App("Not Valid", [])


def test_start_order_puts_dependencies_first() -> None:
    from tests.apps.shop import app

    order = app.start_order()
    assert order.index("currency") < order.index("checkout")
