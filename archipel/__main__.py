"""``python -m archipel`` is the ``archipel`` command."""

from .cli import main

main()
