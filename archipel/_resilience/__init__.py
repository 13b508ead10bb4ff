"""Resilience policies, each an interceptor of the chain (``archipel._chain``)."""
