"""Resilience policies: what each one may be set to, where the settings come from, and which
setting wins for a given call.

Settings come from ``[policies]`` in ``archipel.toml`` (or ``[tool.archipel.policies]``) and from
``@rpc(...)``; for one method the most specific wins::

    built-in default < [policies] < @rpc(timeout=...) < [policies.service] < [policies."service.method"]

so an operator's setting for a service overrides what its code declares, and the top-level table
only changes defaults. Breaker and bulkhead settings belong to a whole target service (the
breaker is per replica, the bulkhead per service): they are refused at the method level.

Everything is checked before anything starts: an unknown service, method or key, a value of the
wrong type or a negative time raises :class:`PolicyError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import DefinitionError

if TYPE_CHECKING:
    from .._app import App


@dataclass(frozen=True, slots=True)
class Policy:
    """The policies of one call site (``service.method``), every field resolved."""

    timeout: float = 10.0  # seconds a call may take, and a served request when its caller set none
    max_timeout: float = 60.0  # cap on the deadline a caller may ask of a served method
    retries: int = 2  # further attempts after a failed one (idempotent, or provably never sent)
    backoff: float = 0.05  # first pause before a retry; doubles each time, jittered, capped at 1 s
    breaker_failures: int = 5  # consecutive failures of one replica that open its breaker
    breaker_cooldown: float = 5.0  # seconds a breaker stays open before one probe is let through
    max_concurrent: int = 50  # calls in flight from this process to one service: half the pool


DEFAULT = Policy()
PER_METHOD = ("timeout", "max_timeout", "retries", "backoff")
PER_SERVICE = ("breaker_failures", "breaker_cooldown", "max_concurrent")
KEYS = PER_METHOD + PER_SERVICE


class _Rule(NamedTuple):
    integer: bool  # a whole number (else any number)
    least: float
    strict: bool  # the value must be above ``least`` (else at least ``least``)
    what: str


_RULES: dict[str, _Rule] = {
    "timeout": _Rule(False, 0, True, "a positive number of seconds"),
    "max_timeout": _Rule(False, 0, True, "a positive number of seconds"),
    "retries": _Rule(True, 0, False, "a whole number >= 0"),
    "backoff": _Rule(False, 0, False, "a number of seconds >= 0"),
    "breaker_failures": _Rule(True, 1, False, "a whole number >= 1"),
    "breaker_cooldown": _Rule(False, 0, False, "a number of seconds >= 0"),
    "max_concurrent": _Rule(True, 1, False, "a whole number >= 1"),
}


class PolicyError(DefinitionError):
    """A policy setting that cannot be applied; the message names the key."""


def check_value(key: str, value: object) -> str | None:
    """Why ``value`` cannot be the setting ``key``, or None when it can."""
    if key not in _RULES:
        return f"unknown policy key (known: {', '.join(KEYS)})"
    rule = _RULES[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value!r} is not {rule.what}"
    if (rule.integer and isinstance(value, float)) or not math.isfinite(value):
        return f"{value!r} is not {rule.what}"
    if value < rule.least or (rule.strict and value == rule.least):
        return f"{value!r} is not {rule.what}"
    return None


class Policies:
    """The policies of an app, resolved per method (``method``) or per service (``service``)."""

    def __init__(
        self,
        defaults: Mapping[str, Any] | None = None,
        services: Mapping[str, Mapping[str, Any]] | None = None,
        methods: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        declared: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    ) -> None:
        self._defaults = dict(defaults or {})
        self._services = {name: dict(values) for name, values in (services or {}).items()}
        self._methods = {name: dict(values) for name, values in (methods or {}).items()}
        self._declared = {name: dict(values) for name, values in (declared or {}).items()}
        self._resolved: dict[tuple[str, str], Policy] = {}

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None, app: App | None = None, *, source: str = ""
    ) -> Policies:
        """Policies from a ``[policies]`` table (as TOML parses it) and ``app``'s ``@rpc`` options.

        Raises :class:`PolicyError` naming the offending key (prefixed with ``source``, the file).
        """
        return _Parser(app, source).parse(config or {})

    def method(self, service: str, method: str) -> Policy:
        """The policies of calls to (and served requests of) ``service.method``."""
        key = (service, method)
        policy = self._resolved.get(key)
        if policy is None:
            values = {
                **self._defaults,
                **self._declared.get(key, {}),
                **self._services.get(service, {}),
                **self._methods.get(key, {}),
            }
            if "timeout" not in values and "max_timeout" in values:
                # Only a cap was set: the built-in timeout follows it down.
                values["timeout"] = min(DEFAULT.timeout, values["max_timeout"])
            policy = self._resolved[key] = dataclasses.replace(DEFAULT, **values)
        return policy

    def service(self, service: str) -> Policy:
        """The service-wide policies (breaker, bulkhead) of calls to ``service``."""
        return self.method(service, "")


class _Parser:
    def __init__(self, app: App | None, source: str) -> None:
        self.app = app
        self.prefix = f"{source}: " if source else ""

    def fail(self, where: str, why: str) -> PolicyError:
        return PolicyError(f"{self.prefix}{where}: {why}")

    def parse(self, config: Mapping[str, Any]) -> Policies:
        defaults: dict[str, Any] = {}
        services: dict[str, dict[str, Any]] = {}
        methods: dict[tuple[str, str], dict[str, Any]] = {}
        for key, value in config.items():
            if not isinstance(value, Mapping):
                defaults[key] = self.value(f"policies.{key}", key, value)
                continue
            service, dot, method = key.partition(".")
            where = f"policies.{_quoted(key)}"
            if dot:
                methods[service, method] = self.table(where, value, service, method)
                continue
            self.check_service(where, service)
            for inner, inner_value in value.items():
                if isinstance(inner_value, Mapping):  # [policies.service.method], unquoted
                    inner_where = f"{where}.{_quoted(inner)}"
                    methods[service, inner] = self.table(inner_where, inner_value, service, inner)
                else:
                    services.setdefault(service, {})[inner] = self.value(
                        f"{where}.{inner}", inner, inner_value
                    )
        policies = Policies(defaults, services, methods, self.declared())
        self.check_timeouts(policies, services, methods)
        return policies

    def table(self, where: str, table: Mapping[str, Any], service: str, method: str) -> dict[str, Any]:
        self.check_service(where, service)
        if self.app is not None and method not in self.app.specs[service].methods:
            raise self.fail(where, f"service {service!r} has no rpc method {method!r}")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key in PER_SERVICE:
                raise self.fail(
                    f"{where}.{key}",
                    f"applies to a whole service (its breakers and bulkhead): set it in [policies.{service}]",
                )
            values[key] = self.value(f"{where}.{key}", key, value)
        return values

    def value(self, where: str, key: str, value: Any) -> Any:
        problem = check_value(key, value)
        if problem is not None:
            raise self.fail(where, problem)
        return value

    def check_service(self, where: str, service: str) -> None:
        if self.app is not None and service not in self.app.specs:
            raise self.fail(
                where,
                f"app {self.app.name!r} has no service {service!r} (services: {', '.join(self.app.specs)})",
            )

    def declared(self) -> dict[tuple[str, str], dict[str, Any]]:
        """What ``@rpc(...)`` set on each method of the app."""
        if self.app is None:
            return {}
        return {
            (spec.name, method.name): method.policy
            for spec in self.app.specs.values()
            for method in spec.methods.values()
            if method.policy
        }

    def check_timeouts(
        self,
        policies: Policies,
        services: Mapping[str, Any],
        methods: Mapping[tuple[str, str], Any],
    ) -> None:
        """A default deadline above the cap would be cut by the method's own server."""
        if self.app is None:
            pairs = list(methods) + [(s, "") for s in services] + [("", "")]
        else:
            pairs = [(s.name, m) for s in self.app.specs.values() for m in s.methods]
        for service, method in pairs:
            policy = policies.method(service, method)
            if policy.timeout > policy.max_timeout:
                name = f"{service}.{method}".strip(".") or "every method"
                raise self.fail(
                    "policies",
                    f"{name}: timeout {policy.timeout:g} is above max_timeout {policy.max_timeout:g}",
                )


def _quoted(key: str) -> str:
    return f'"{key}"' if "." in key else key
