"""A small MQTT 5 client: packets (:mod:`.packets`), one connection (:mod:`.connection`), and the
client the event bus and the broker probes use (:mod:`.client`)."""
