"""The files that deploy an app elsewhere than ``archipel run``: a Docker image, a Compose file,
a kustomize base, and the credentials they reference. ``archipel deploy`` writes them
(``archipel._deploy.deploy_commands``); each target is one module of this package."""

from .common import Output
from .compose import compose_files
from .docker import docker_files
from .kubernetes import kubernetes_files
from .secrets import write_secrets

__all__ = ["Output", "compose_files", "docker_files", "kubernetes_files", "write_secrets"]
