"""The names and labels of one deployment's Kubernetes resources (``DEPLOYMENT-PROCESS``, the
``app.kubernetes.io/*`` labels), checked once for clashes and length."""

from __future__ import annotations

from typing import Any

from ..._errors import DefinitionError
from ..plan import DeploymentPlan
from .common import BROKER, resource_name


class Names:
    """Resource names and labels of one deployment: ``DEPLOYMENT-PROCESS``, DNS labels."""

    def __init__(self, plan: DeploymentPlan, version: str) -> None:
        self.plan = plan
        self.version = version
        seen: dict[str, str] = {}
        for name in [*plan.process_names, BROKER]:
            resource = self.resource(name)
            if resource in seen:
                raise DefinitionError(
                    f"processes {seen[resource]!r} and {name!r} would share the name {resource!r}"
                )
            if len(resource) > 52:  # a StatefulSet's pods add a suffix; Services allow 63
                raise DefinitionError(
                    f"{resource!r} is too long for a Kubernetes name: shorten the deployment"
                )
            seen[resource] = name

    def resource(self, name: str) -> str:
        return resource_name(self.plan, name)

    def selector(self, name: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": self.plan.deployment}

    def labels(self, name: str, component: str) -> dict[str, str]:
        return {
            **self.selector(name),
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": self.plan.app.name,
            "app.kubernetes.io/version": self.version,
            "app.kubernetes.io/managed-by": "archipel",
        }

    def metadata(self, name: str, component: str, suffix: str = "") -> dict[str, Any]:
        return {"name": self.resource(name) + suffix, "labels": self.labels(name, component)}
