"""MQTT cloud sync: store-and-forward of the SQLite outbox (see docs/mqtt.md)."""

from bess_edge.sync.syncer import Syncer

__all__ = ["Syncer"]
