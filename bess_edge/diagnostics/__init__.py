"""On-device diagnostics: from a stream of Readings to a Diagnosis per poll."""

from bess_edge.diagnostics.engine import Diagnosis, Diagnostician

__all__ = ["Diagnosis", "Diagnostician"]
