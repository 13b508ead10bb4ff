"""An app: a name and a set of services, checked as a whole at start-up."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from ._errors import DefinitionError
from ._model import Event, Service, ServiceSpec, describe

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class App:
    """A named set of services. Where each one runs is decided at deploy time, never here.

    >>> app = App("shop", [Currency, Checkout, Email])
    """

    def __init__(self, name: str, services: Sequence[type[Service]]) -> None:
        if not _NAME.match(name):
            raise DefinitionError(f"App name {name!r} must be lower case letters, digits, '-' or '_'")
        self.name = name
        self.services = list(services)
        # Where the app was defined, so child processes can import it again by reference.
        self.module: str = sys._getframe(1).f_globals.get("__name__", "__main__")
        self._specs: dict[str, ServiceSpec] | None = None

    @property
    def specs(self) -> dict[str, ServiceSpec]:
        """Every service's spec by wire name, validated once (raises DefinitionError)."""
        if self._specs is None:
            self._specs = _validate(self.name, self.services)
        return self._specs

    def validate(self) -> None:
        """Check every service definition now; raises DefinitionError naming the class and method."""
        self._specs = _validate(self.name, self.services)

    def spec_of(self, cls: type[Service]) -> ServiceSpec:
        spec = describe(cls)
        if spec.name not in self.specs or self.specs[spec.name].cls is not cls:
            raise DefinitionError(f"{cls.__name__} is not a service of app {self.name!r}")
        return spec

    def start_order(self, names: Iterable[str] | None = None) -> list[str]:
        """Service names with each one after its dependencies (stop in reverse)."""
        wanted = set(self.specs if names is None else names)
        return [name for name in _topological(self.specs) if name in wanted]

    def event_types(self) -> dict[str, type[Event]]:
        """Every event type handled in the app, by topic."""
        return {h.topic: h.event_type for spec in self.specs.values() for h in spec.handlers}

    def emitters(self) -> dict[str, set[str]]:
        """By topic, the services that declare (``emits=``) an event of that topic."""
        found: dict[str, set[str]] = {}
        for spec in self.specs.values():
            for event_type in spec.emits:
                found.setdefault(event_type.__topic__, set()).add(spec.name)
        return found

    def callers_of(self, service: str) -> set[str]:
        """The services that declare ``service`` as a dependency: by default, the only ones allowed
        to call its internal methods."""
        return {
            spec.name
            for spec in self.specs.values()
            if any(dep.__service_name__ == service for dep in spec.dependencies.values())
        }

    def __repr__(self) -> str:
        return f"App({self.name!r}, [{', '.join(self.specs)}])"


def _validate(app: str, services: Sequence[type[Service]]) -> dict[str, ServiceSpec]:
    if not services:
        raise DefinitionError(f"App {app!r} has no services")
    specs: dict[str, ServiceSpec] = {}
    for cls in services:
        spec = describe(cls)
        if not _NAME.match(spec.name):
            raise DefinitionError(f"{cls.__name__}: service name {spec.name!r} is not a valid name")
        if spec.name in specs:
            other = specs[spec.name].cls.__name__
            raise DefinitionError(f"App {app!r}: {cls.__name__} and {other} share the name {spec.name!r}")
        specs[spec.name] = spec
    classes = {spec.cls for spec in specs.values()}
    for spec in specs.values():
        for attr, dep in spec.dependencies.items():
            if dep not in classes:
                raise DefinitionError(
                    f"{spec.cls.__name__}.{attr}: depends on {dep.__name__}, which is not a service of "
                    f"app {app!r}"
                )
    for spec in specs.values():
        for target, fallbacks in spec.optional.items():
            _check_fallbacks(spec, specs[target], fallbacks)
    _topological(specs)
    return specs


def _check_fallbacks(caller: ServiceSpec, target: ServiceSpec, fallbacks: dict[str, Any]) -> None:
    for method, fallback in fallbacks.items():
        where = f"{caller.cls.__name__}: optional({target.cls.__name__}) fallback {method}="
        if method not in target.methods:
            raise DefinitionError(f"{where}: {target.cls.__name__} has no rpc method {method!r}")
        if callable(fallback):
            continue
        try:
            msgspec.convert(fallback, target.methods[method].returns, from_attributes=True)
        except (msgspec.ValidationError, TypeError) as exc:
            raise DefinitionError(f"{where}{fallback!r} is not a valid result of that method: {exc}") from exc


def _topological(specs: dict[str, ServiceSpec]) -> list[str]:
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            raise DefinitionError(
                "dependency cycle cannot be started: " + " -> ".join(specs[n].cls.__name__ for n in cycle)
            )
        state[name] = "visiting"
        for dep in specs[name].dependencies.values():
            visit(dep.__service_name__, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in specs:
        visit(name, [])
    return order
