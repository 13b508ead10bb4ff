"""``archipel bench``: load an app's edge with a request mix in each placement and compare.

- :mod:`.mix`: the request mix (weighted calls of HTTP steps), from a Locust file or a calls file;
- :mod:`.load`: open-loop (fixed arrival rate) and closed-loop (N users) load with aiohttp;
- :mod:`.procs`: CPU seconds and peak RSS of a deployment's processes, from ``/proc``;
- :mod:`.result`: the result file's schema (one JSON file per scenario run);
- :mod:`.render`: the Markdown table, the ratios to a baseline, and the plots;
- :mod:`.deployment`: one placement of an app started with ``archipel run``, then stopped;
- :mod:`.command`: the ``archipel bench`` command;
- :mod:`.advisor`: which services to group in one process, from measured calls and CPU (pure);
- :mod:`.observe`: those measurements, from every process's ``/metrics`` under the mix;
- :mod:`.plan_command`: the ``archipel plan`` command (measure, advise, verify).
"""
