"""The entry point of one process of a deployment: ``python -m archipel.worker``.

The local supervisor, a Compose service and a Kubernetes container all start it, configured by
``ARCHIPEL_*`` environment variables (see ``archipel._deploy.environment`` for the list).
"""

from ._deploy.worker import main

if __name__ == "__main__":
    main()
