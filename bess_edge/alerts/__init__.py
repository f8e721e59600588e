"""Local alerts: rules from the config file evaluated on every cycle, with no cloud needed."""

from bess_edge.alerts.engine import AlertEngine

__all__ = ["AlertEngine"]
