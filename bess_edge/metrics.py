"""Prometheus metrics: one registry, and one line for any module to report into it.

Two kinds, on purpose:

* **Events** are counted where they happen, with the module-level objects below, e.g.
  ``metrics.MQTT_PUBLISHED.labels("telemetry").inc(n)`` in sync.
  They cost a lock and an add; nothing else needs to know about them.
* **State** (comms state, buffer rows and bytes, active alerts, last sync, a driver's own frame
  counters) is read at scrape time from a :class:`~bess_edge.health.Health` snapshot, so it is
  never stale and the hot path pays nothing for it (see :func:`exposition`).

A registry of our own, not prometheus_client's global one: tests and tools that import bess-edge
twice never collide, and only what we chose (plus the process's memory, CPU and fds) is exposed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from bess_edge.model import CommsState

if TYPE_CHECKING:
    from bess_edge.health import Health

__all__ = ["CONTENT_TYPE", "REGISTRY", "exposition"]

# The classic text format, which generate_latest writes by default: every Prometheus version and
# every other scraper (Telegraf, VictoriaMetrics, ...) reads it. (prometheus_client >= 0.22 names
# 1.0.0 as its latest, which older scrapers reject.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, cpu seconds, open fds

# -- daemon (bess_edge/daemon.py) ---------------------------------------------------------------
SAMPLES_WRITTEN = Counter(
    "bess_edge_samples_written",
    "Readings committed to the SQLite buffer",
    ["device"],
    registry=REGISTRY,
)
POLL_DURATION = Histogram(
    "bess_edge_poll_duration_seconds",
    "Time of successful polls, open and read (failed polls are counted in poll_errors)",
    ["device"],
    # A Modbus TCP read is ~10 ms, an RTU read at 9600 baud ~100 ms, a timeout is seconds.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
POLL_LATENESS = Histogram(
    "bess_edge_poll_lateness_seconds",
    "How long after its scheduled slot each poll started (an overloaded gateway runs late)",
    ["device"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
POLLS_SKIPPED = Counter(
    "bess_edge_polls_skipped",
    "Scheduled polls skipped whole because the previous poll of the device ended past their slot",
    ["device"],
    registry=REGISTRY,
)

# -- MQTT sync (bess_edge/sync): set these from the sync task ----------------------------------
MQTT_CONNECTED = Gauge(
    "bess_edge_mqtt_connected", "1 while the broker connection is up", registry=REGISTRY
)
MQTT_INFLIGHT = Gauge(
    "bess_edge_mqtt_inflight_messages",
    "QoS 1 messages sent and awaiting the broker's PUBACK",
    registry=REGISTRY,
)
MQTT_PUBLISHED = Counter(
    "bess_edge_mqtt_published_messages",
    "Messages acknowledged by the broker (PUBACK)",
    ["stream"],
    registry=REGISTRY,
)

SEVERITIES = ("info", "warning", "critical")
STREAMS = ("alerts", "diagnostics", "telemetry")
# A CAN driver's FrameCounters fields (drivers/can_decode.py): frames it could not use, by reason.
# Its other fields (frames, unmapped, error_frames, bus_off, ...) are bus events.
CAN_DROP_REASONS = ("unknown_id", "wrong_dlc", "undecodable")


def site_families(health: Health) -> Iterator[Metric]:
    """The state metrics, built fresh from one health snapshot (no stale label sets)."""
    polls = CounterMetricFamily(
        "bess_edge_polls", "Poll attempts per device (persisted across restarts)", labels=["device"]
    )
    errors = CounterMetricFamily(
        "bess_edge_poll_errors",
        "Failed polls per device: timeouts and driver errors (persisted across restarts)",
        labels=["device"],
    )
    comms = GaugeMetricFamily(
        "bess_edge_device_comms_state",
        "1 for the device's current comms state, 0 for the others",
        labels=["device", "state"],
    )
    last_ok = GaugeMetricFamily(
        "bess_edge_device_last_reading_age_seconds",
        "Seconds since the device's last good reading",
        labels=["device"],
    )
    last_duration = GaugeMetricFamily(
        "bess_edge_device_last_poll_duration_seconds",
        "Duration of the device's last poll attempt",
        labels=["device"],
    )
    for d in health.devices:
        polls.add_metric([d.id], d.polls)
        errors.add_metric([d.id], d.poll_errors)
        for state in CommsState:
            comms.add_metric([d.id, state.value], 1.0 if d.comms == state.value else 0.0)
        if d.last_reading_age_s is not None:
            last_ok.add_metric([d.id], d.last_reading_age_s)
        last_duration.add_metric([d.id], d.last_poll_duration_s)
    yield from (polls, errors, comms, last_ok, last_duration)
    yield from _frame_families(health)

    rows = GaugeMetricFamily(
        "bess_edge_buffer_unsent_rows", "Outbox rows not yet published", labels=["stream"]
    )
    for stream in STREAMS:
        rows.add_metric([stream], health.unsent.get(stream, 0))
    yield rows
    yield GaugeMetricFamily(
        "bess_edge_buffer_bytes", "Size of the SQLite buffer and its WAL", value=health.buffer_bytes
    )
    yield GaugeMetricFamily(
        "bess_edge_buffer_cap_bytes", "storage.max_size_mb in bytes", value=health.buffer_cap_bytes
    )
    yield CounterMetricFamily(
        "bess_edge_telemetry_dropped",
        "Unsent telemetry rows dropped at the storage cap (persisted across restarts)",
        value=health.telemetry_dropped,
    )
    alerts = GaugeMetricFamily(
        "bess_edge_alerts_active", "Active alerts by severity", labels=["severity"]
    )
    for severity in SEVERITIES:
        alerts.add_metric([severity], health.alerts_active.get(severity, 0))
    yield alerts
    yield GaugeMetricFamily(
        "bess_edge_mqtt_backlog_age_seconds",
        "Age of the oldest row still waiting in the outbox (0 when drained)",
        value=health.backlog_age_s,
    )
    if health.last_sync_ts_ms is not None:
        yield GaugeMetricFamily(
            "bess_edge_last_sync_timestamp_seconds",
            "Wall-clock time of the last broker acknowledgement",
            value=health.last_sync_ts_ms / 1000,
        )
    yield GaugeMetricFamily(
        "bess_edge_healthy", "1 when /health answers 200", value=1.0 if health.healthy else 0.0
    )


def _frame_families(health: Health) -> Iterator[Metric]:
    """CAN frame counters, read from the drivers that keep them (no code in the receive path)."""
    decoded = CounterMetricFamily(
        "bess_edge_can_frames_decoded", "CAN frames decoded by the DBC", labels=["device"]
    )
    dropped = CounterMetricFamily(
        "bess_edge_can_frames_dropped",
        "CAN frames not used, by reason",
        labels=["device", "reason"],
    )
    events = CounterMetricFamily(
        "bess_edge_can_events",
        "Other CAN receive counters: frames, unmapped, error_frames, bus_off, bus_errors, reopens",
        labels=["device", "event"],
    )
    for d in health.devices:
        for name, value in (d.frame_counters or {}).items():
            if name == "decoded":
                decoded.add_metric([d.id], value)
            elif name in CAN_DROP_REASONS:
                dropped.add_metric([d.id, name], value)
            else:
                events.add_metric([d.id, name], value)
    yield from (decoded, dropped, events)


class _Scrape:
    """The event registry plus one snapshot's state metrics, as one collector."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from site_families(self.health)


def exposition(health: Health) -> bytes:
    """The Prometheus text format for one scrape."""
    return generate_latest(_Scrape(health))  # type: ignore[arg-type]


def gauge_value(gauge: Gauge) -> float:
    """The value of an unlabelled gauge (for /health's broker state), read from it alone: the
    registry's get_sample_value collects every metric first, ~3 ms with 20 devices'
    histograms, and the daemon state file asks every 5 s."""
    (family,) = gauge.collect()
    return float(family.samples[0].value)
