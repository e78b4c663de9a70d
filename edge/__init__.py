"""edge-mood daemon: camera -> faces -> expressions -> MQTT."""

__version__ = "0.1.0"
