"""The PostgreSQL schema, created and migrated by ``bess-edge ingest`` at start.

Migrations are numbered SQL scripts applied in order, each in its own transaction, under an
advisory lock so that workers starting together migrate once. ``schema_version`` holds the last
one applied. docs/cloud.md describes each table and the index behind each query.

Samples are keyed by ``(device_id, seq, ts_ms)``: ``ts_ms`` is the partition key, which a unique
index on a partitioned table must contain. A gateway stores each item once and re-publishes it
from that row, so a seq always comes back with the same ``ts_ms`` and the key is, in effect,
``(site, device, stream, seq)``.
"""

from __future__ import annotations

import logging

import psycopg

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x62657373  # "bess": pg_advisory_xact_lock key of the migrations

TELEMETRY_SCALARS = (
    "pack_voltage_v", "pack_current_a", "pack_power_w", "bms_soc_pct", "bms_soh_pct",
    "cell_voltage_min_v", "cell_voltage_max_v", "cell_temperature_min_c", "cell_temperature_max_c",
)  # fmt: skip
DIAGNOSIS_HEADLINES = (
    "soc_pct", "soh_pct", "capacity_ah", "r0_ohm", "cell_spread_v", "temperature_max_c",
    "thermal_risk_level", "equivalent_full_cycles", "remaining_cycles",
)  # fmt: skip
PARTITIONED = ("telemetry", "battery_diagnostics")

_V1 = f"""
CREATE TABLE sites (
    id serial PRIMARY KEY,
    site text NOT NULL UNIQUE,
    name text NOT NULL DEFAULT '',
    created_ms bigint NOT NULL,
    state text,                 -- the gateway's retained online/offline message
    state_ts_ms bigint,
    last_seen_ms bigint,        -- last data message
    last_ping_ms bigint         -- last ping sent by gap repair
);
CREATE TABLE devices (
    id serial PRIMARY KEY,
    site_id int NOT NULL REFERENCES sites ON DELETE CASCADE,
    device text NOT NULL,       -- '_site' holds site-wide alerts
    first_seen_ms bigint NOT NULL,
    UNIQUE (site_id, device)
);
CREATE TABLE telemetry (
    device_id int NOT NULL,
    seq bigint NOT NULL,
    ts_ms bigint NOT NULL,
    quality int NOT NULL,
    {", ".join(f"{c} real" for c in TELEMETRY_SCALARS)},
    status_flags bigint,
    fault_flags bigint,
    cell_voltage_v real[],
    cell_temperature_c real[],
    extra jsonb,                -- NULL when empty
    quality_notes jsonb
) PARTITION BY RANGE (ts_ms);
-- Idempotency (ON CONFLICT DO NOTHING) and gap repair (seq > contiguous, per device).
CREATE UNIQUE INDEX telemetry_seq ON telemetry (device_id, seq, ts_ms);
-- The API's series and latest queries: one device, a time range, newest first.
CREATE INDEX telemetry_time ON telemetry (device_id, ts_ms);
CREATE TABLE battery_diagnostics (
    device_id int NOT NULL,
    seq bigint NOT NULL,
    ts_ms bigint NOT NULL,
    soc_pct real, soh_pct real, capacity_ah real, r0_ohm real, cell_spread_v real,
    temperature_max_c real, thermal_risk_level smallint, equivalent_full_cycles real,
    remaining_cycles real,
    diagnosis jsonb NOT NULL    -- the whole diagnosis, as published
) PARTITION BY RANGE (ts_ms);
CREATE UNIQUE INDEX battery_diagnostics_seq ON battery_diagnostics (device_id, seq, ts_ms);
CREATE INDEX battery_diagnostics_time ON battery_diagnostics (device_id, ts_ms);
CREATE TABLE alert_history (
    id bigserial PRIMARY KEY,
    device_id int NOT NULL REFERENCES devices,
    seq bigint,                 -- the gateway's alerts seq; NULL for cloud-raised alerts
    ts_ms bigint NOT NULL,
    source text NOT NULL DEFAULT 'gateway' CHECK (source IN ('gateway', 'cloud')),
    alert_id bigint NOT NULL,   -- the gateway's episode id, or cloud_alerts.id
    transition text NOT NULL CHECK (transition IN ('raised', 'acknowledged', 'cleared')),
    rule text NOT NULL,
    severity text NOT NULL,
    message text NOT NULL DEFAULT '',
    cell int,
    value double precision,
    actor text,
    note text
);
CREATE UNIQUE INDEX alert_history_seq ON alert_history (device_id, seq);
CREATE INDEX alert_history_time ON alert_history (ts_ms);
-- The state of every gateway alert episode after its newest transition.
CREATE TABLE alerts_current (
    device_id int NOT NULL REFERENCES devices,
    alert_id bigint NOT NULL,
    seq bigint NOT NULL,        -- of the transition shown; an older one arriving late is ignored
    state text NOT NULL,
    rule text NOT NULL,
    severity text NOT NULL,
    message text NOT NULL,
    raised_ms bigint,
    updated_ms bigint NOT NULL,
    actor text,
    note text,
    PRIMARY KEY (device_id, alert_id)
);
CREATE INDEX alerts_current_active ON alerts_current (device_id) WHERE state <> 'cleared';
-- Fleet rules checked on every telemetry batch (the newest sample of each device).
CREATE TABLE alert_thresholds (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    metric text NOT NULL CHECK (metric IN ({", ".join(f"'{c}'" for c in TELEMETRY_SCALARS)})),
    op text NOT NULL CHECK (op IN ('>', '<')),
    threshold double precision NOT NULL,
    clear double precision,     -- hysteresis: clears on the other side of this (default: threshold)
    severity text NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
    site text,                  -- NULL: every site
    enabled boolean NOT NULL DEFAULT true
);
CREATE TABLE cloud_alerts (
    id bigserial PRIMARY KEY,
    threshold_id int NOT NULL REFERENCES alert_thresholds ON DELETE CASCADE,
    device_id int NOT NULL REFERENCES devices,
    raised_ms bigint NOT NULL,
    value double precision,
    acknowledged_ms bigint,
    actor text,
    cleared_ms bigint
);
CREATE UNIQUE INDEX cloud_alerts_open ON cloud_alerts (threshold_id, device_id)
    WHERE cleared_ms IS NULL;
CREATE TABLE users (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    role text NOT NULL DEFAULT 'viewer' CHECK (role IN ('viewer', 'operator', 'admin')),
    key_sha256 text NOT NULL UNIQUE,  -- hex SHA-256 of the API key; the key itself is never kept
    created_ms bigint NOT NULL,
    disabled boolean NOT NULL DEFAULT false
);
CREATE TABLE dead_letter (
    id bigserial PRIMARY KEY,
    received_ms bigint NOT NULL,
    topic text NOT NULL,
    reason text NOT NULL,
    payload bytea,              -- the first 64 KiB
    payload_bytes int NOT NULL,
    site text, device text, stream text, seq bigint,  -- when known (one refused item)
    worker text NOT NULL
);
CREATE INDEX dead_letter_time ON dead_letter (received_ms);
-- Gap repair counts a refused item (time outside the window) as received.
CREATE INDEX dead_letter_seq ON dead_letter (site, device, stream, seq) WHERE seq IS NOT NULL;
-- Gap repair's state per stream: everything up to contiguous_seq is here.
CREATE TABLE stream_progress (
    device_id int NOT NULL REFERENCES devices,
    stream text NOT NULL CHECK (stream IN ('telemetry', 'diagnostics', 'alerts')),
    contiguous_seq bigint NOT NULL,
    max_seq bigint NOT NULL,    -- newest seq received
    head_seq bigint NOT NULL DEFAULT 0,  -- the gateway's published head (ping reply)
    request_ms bigint,          -- the republish request in flight, if any
    request_first bigint,
    request_last bigint,
    requests bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, stream)
);
CREATE TABLE open_gaps (
    device_id int NOT NULL,
    stream text NOT NULL,
    seq_first bigint NOT NULL,
    seq_last bigint NOT NULL,
    since_ms bigint NOT NULL,
    PRIMARY KEY (device_id, stream, seq_first)
);
CREATE VIEW gaps AS
    SELECT s.site, d.device, g.stream, g.seq_first, g.seq_last,
           g.seq_last - g.seq_first + 1 AS missing, g.since_ms,
           p.request_ms AS last_request_ms, p.requests
    FROM open_gaps g
    JOIN devices d ON d.id = g.device_id
    JOIN sites s ON s.id = d.site_id
    JOIN stream_progress p ON p.device_id = g.device_id AND p.stream = g.stream;
"""

# Acknowledgements asked for through the cloud API: the ingest sends each as the gateway's
# cmd/ack (the gateway owns its alert state) and records the reply.
_V2 = """
CREATE TABLE ack_requests (
    id bigserial PRIMARY KEY,
    site_id int NOT NULL REFERENCES sites ON DELETE CASCADE,
    alert_id bigint NOT NULL,   -- the gateway's alert id
    actor text NOT NULL,
    note text,
    requested_ms bigint NOT NULL,
    sent_ms bigint,             -- last cmd/ack sent (again after retry_s without a reply)
    done_ms bigint,
    result text                 -- 'acknowledged', or the gateway's reason for refusing
);
CREATE INDEX ack_requests_pending ON ack_requests (requested_ms) WHERE done_ms IS NULL;
"""

# The API's key listing tells keys apart by their last characters (bess_edge/storage/keys.py).
_V3 = "ALTER TABLE users ADD COLUMN key_hint text NOT NULL DEFAULT ''"

# Pack scalars and diagnosis headlines as double precision: the API's Storage contract wants
# values exact to 15 significant digits (real kept 7: 52.81 came back as 52.8100013). Cell
# arrays stay real[]: the gateway keeps float32 cells and sends them to 0.1 mV.
_V4 = "\n".join(
    [f"ALTER TABLE telemetry ALTER COLUMN {c} TYPE double precision;" for c in TELEMETRY_SCALARS]
    + [
        f"ALTER TABLE battery_diagnostics ALTER COLUMN {c} TYPE double precision;"
        for c in DIAGNOSIS_HEADLINES
        if c != "thermal_risk_level"
    ]
)

# An alert's events are read by (device, episode): without this, every alert in a list scanned
# the whole history (100 alerts of 600,000 transitions: 1.35 s).
_V5 = "CREATE INDEX alert_history_alert ON alert_history (device_id, alert_id)"

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5)


def migrate(conn: psycopg.Connection) -> int:
    """Apply the migrations this database lacks; returns the schema version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(script)  # type: ignore[arg-type]  # our own constant SQL
            conn.execute("INSERT INTO schema_version VALUES (%s)", (number,))
            log.info("database migrated", extra={"schema_version": number})
            version = number
    return version
