"""Ingest write rate against a raw psycopg COPY of the same rows, and workers through mosquitto.

Starts its own PostgreSQL cluster (tests/pg_server.py: a temporary directory, a free loopback
port) and mosquitto, builds 16-cell telemetry payloads as a gateway publishes them (JSON, batches
of ``--items-per-message`` samples), then measures in one run:

1. **raw COPY**: the same rows, already as Python tuples, ``COPY telemetry FROM STDIN`` with
   psycopg into the same partitioned table with the same indexes: the reference;
2. **ingest write path**: those payloads through :class:`Parser` (JSON, schema validation) and
   :class:`Writer` (staging COPY, ``INSERT ... ON CONFLICT DO NOTHING``, one transaction per
   batch), in process: the headline ratio (target >= 0.5);
3. **one worker / two workers end to end**: ``bess-edge ingest`` processes on a shared
   subscription, the payloads published to mosquitto while they run, timed from the first
   publish to the last row committed (target >= 5,000
   samples/s for one worker; two >= 1.6x where the cores allow).

    .venv/bin/python benchmarks/ingest_bench.py [--samples 60000] [--items-per-message 20]
        [--in-process]  (1 and 2 only)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bess_edge.cloud.messages import Parser
from bess_edge.cloud.schema import migrate
from bess_edge.cloud.writer import _TELEMETRY_COLUMNS, Writer, _telemetry_row
from bess_edge.sync.payload import dumps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_server import PostgresServer, free_port

CELLS = 16


def payloads(
    samples: int, per_message: int, devices: int, cells: int = CELLS
) -> list[tuple[str, bytes]]:
    """Telemetry messages as a gateway publishes them, device after device."""
    rng = np.random.default_rng(1)
    start_ms = int(time.time() * 1000) - samples * 1000
    out = []
    per_device = samples // devices
    for d in range(devices):
        for first in range(1, per_device + 1, per_message):
            items = []
            for seq in range(first, min(first + per_message, per_device + 1)):
                volts = np.round(3.3 + rng.normal(0, 0.002, cells), 3).tolist()
                temps = np.round(25 + rng.normal(0, 0.2, max(1, cells // 4)), 1).tolist()
                items.append({
                    "seq": seq, "ts_ms": start_ms + seq * 1000, "quality": 0,
                    "quality_flags": [], "pack_voltage_v": round(sum(volts), 3),
                    "pack_current_a": 20.0, "pack_power_w": round(20 * sum(volts), 3),
                    "bms_soc_pct": 61.0, "bms_soh_pct": None, "cell_voltage_min_v": min(volts),
                    "cell_voltage_max_v": max(volts), "cell_temperature_min_c": min(temps),
                    "cell_temperature_max_c": max(temps), "status_flags": 0, "fault_flags": 0,
                    "cell_voltage_v": volts, "cell_temperature_c": temps,
                    "extra": {}, "quality_notes": [],
                })  # fmt: skip
            doc = {"schema": "bess-edge/telemetry/1", "site": "site-1", "device": f"rack-{d}",
                   "stream": "telemetry", "seq_first": first, "seq_last": items[-1]["seq"],
                   "count": len(items), "items": items}  # fmt: skip
            out.append((f"bess/site-1/rack-{d}/telemetry", dumps(doc)))
    return out


def fresh_db(server: PostgresServer, name: str) -> str:
    url = server.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("INSERT INTO sites (site, created_ms) VALUES ('site-1', 0)")
    return url


def raw_copy(url: str, messages: list[tuple[str, bytes]]) -> float:
    """Samples/s of COPY of ready tuples (decoded beforehand, outside the timing)."""
    import json

    with psycopg.connect(url, autocommit=True) as conn:
        writer = Writer(conn, worker="bench", retention_days=30)  # registers devices, partitions
        rows = []
        for _topic, payload in messages:
            doc = json.loads(payload)
            device_id = writer._device_id("site-1", doc["device"])
            assert device_id is not None
            rows += [_telemetry_row(device_id, item) for item in doc["items"]]
        from bess_edge.cloud.partitions import day_of

        writer.partitions.ensure(conn, {day_of(r[2]) for r in rows})
        names = ", ".join(_TELEMETRY_COLUMNS)
        started = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(f"COPY telemetry ({names}) FROM STDIN") as cp:  # type: ignore[arg-type]
            for row in rows:
                cp.write_row(row)
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def write_path(url: str, messages: list[tuple[str, bytes]], batch_items: int) -> float:
    """Samples/s of parse + validate + write, one transaction per batch_items samples."""
    parser = Parser("bess", 4 << 20)
    with psycopg.connect(url, autocommit=True) as conn:
        writer = Writer(conn, worker="bench", retention_days=30)
        samples = 0
        started = time.perf_counter()
        batch: list[Any] = []
        items = 0
        for topic, payload in messages:
            message = parser.parse(topic, payload)
            batch.append(message)
            items += len(message.items)  # type: ignore[union-attr]
            if items >= batch_items:
                samples += sum(writer.write(batch).inserted.values())
                batch, items = [], 0
        if batch:
            samples += sum(writer.write(batch).inserted.values())
        elapsed = time.perf_counter() - started
    return samples / elapsed


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def through_broker(
    url: str, messages: list[tuple[str, bytes]], workers: int, tmp: Path
) -> tuple[float, float]:
    """Samples/s with N ingest worker processes, from the first publish to the last commit,
    and the workers' CPU seconds per sample (what a worker costs, whatever else runs)."""
    port = free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 1000\nmax_queued_messages 1000000\n")  # fmt: skip
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                               str(conf)], stderr=subprocess.DEVNULL)  # fmt: skip
    cloud = tmp / f"cloud-{port}.toml"
    cloud.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n[ingest]\n'
                     f'database_url = "{url}"\ngroup = "bench"\ngrace_s = 60\n'
                     '[logging]\nlevel = "info"\nformat = "json"\n')  # fmt: skip
    logs = [tmp / f"worker-{port}-{i}.log" for i in range(workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bess_edge",
                "ingest",
                "--config",
                str(cloud),
                "--client-id",
                f"bench-{i}",
            ],
            env=os.environ.copy(),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i, log in enumerate(logs)
    ]
    total = sum(payload.count(b'"seq":') for _, payload in messages)
    try:
        deadline = time.monotonic() + 60  # every worker subscribed: the broker drops the rest
        while not all(b"connected to the broker" in log.read_bytes() for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not connect: " + logs[0].read_text()[-2000:])
            time.sleep(0.1)
        time.sleep(0.5)  # the SUBACK
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.max_inflight_messages_set(1000)
        client.connect("127.0.0.1", port)
        client.loop_start()
        cpu_before = sum(cpu_s(p.pid) for p in procs)
        started = time.perf_counter()
        for topic, payload in messages:
            client.publish(topic, payload, qos=1)
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
                if row and row[0] >= total:
                    break
                if time.perf_counter() - started > 300:
                    raise RuntimeError(f"only {row} of {total} rows after 300 s")
                time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_s(p.pid) for p in procs) - cpu_before
        client.loop_stop()
        return total / elapsed, cpu / total
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        broker.kill()


def diagnoses(samples: int, per_message: int) -> list[tuple[str, bytes]]:
    """Diagnostics messages with the daemon's own Diagnosis document (one device)."""
    from bess_edge.diagnostics.diagnosis import Diagnosis

    start_ms = int(time.time() * 1000) - samples * 1000
    out = []
    for first in range(1, samples + 1, per_message):
        seqs = range(first, min(first + per_message, samples + 1))
        items = [{"seq": seq, "ts_ms": start_ms + seq * 1000,
                  "diagnosis": Diagnosis("rack-0", start_ms + seq * 1000).to_dict()}
                 for seq in seqs]  # fmt: skip
        doc = {"schema": "bess-edge/diagnostics/1", "site": "site-1", "device": "rack-0",
               "stream": "diagnostics", "seq_first": first, "seq_last": seqs[-1],
               "count": len(items), "items": items}  # fmt: skip
        out.append(("bess/site-1/rack-0/diagnostics", dumps(doc)))
    return out


def disk_per_row(server: PostgresServer, name: str, messages: list[tuple[str, bytes]]) -> float:
    """Bytes on disk per row (heap, TOAST and indexes of every partition) after a VACUUM."""
    url = fresh_db(server, name)
    write_path(url, messages, 2000)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)), (SELECT count(*) FROM telemetry) + "
            "(SELECT count(*) FROM battery_diagnostics) FROM pg_inherits i JOIN pg_class c "
            "ON c.oid = i.inhrelid WHERE c.relkind = 'r'"
        ).fetchone()
    assert row is not None
    return float(row[0]) / float(row[1])


def sizing(server: PostgresServer) -> None:
    """Wire and disk bytes per sample and per diagnosis: the inputs of docs/cloud.md's table."""
    for cells, n in ((16, 5000), (1000, 500)):
        msgs = payloads(n, 20, 1, cells)
        wire = sum(len(p) for _, p in msgs) / n
        disk = disk_per_row(server, f"size{cells}", msgs)
        print(f"telemetry, {cells:4} cells: {wire:8,.0f} B/sample as JSON, {disk:8,.0f} B/row "
              "on disk")  # fmt: skip
    msgs = diagnoses(5000, 20)
    wire = sum(len(p) for _, p in msgs) / 5000
    disk = disk_per_row(server, "sizediag", msgs)
    print(f"diagnoses:              {wire:8,.0f} B/item as JSON,   {disk:8,.0f} B/row on disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--items-per-message", type=int, default=20)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--batch-items", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="raw/ingest pairs (median)")
    parser.add_argument("--sizing", action="store_true", help="only bytes per row, wire and disk")
    parser.add_argument(
        "--in-process", action="store_true", help="only the raw/ingest pairs, no broker runs"
    )
    args = parser.parse_args()
    messages = payloads(args.samples, args.items_per_message, args.devices)
    size = sum(len(p) for _, p in messages) / args.samples
    print(f"{args.samples} samples of {CELLS} cells in {len(messages)} messages, "
          f"{size:.0f} B per sample on the wire; {os.cpu_count()} cores")  # fmt: skip
    server = PostgresServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        if args.sizing:
            sizing(server)
            return
        # Interleaved pairs on fresh databases: on a shared machine the load moves between
        # runs, and the median of the pairs' ratios is steadier than any one figure.
        ratios = []
        for i in range(args.repeat):
            raw = raw_copy(fresh_db(server, f"raw{i}"), messages)
            ours = write_path(fresh_db(server, f"ours{i}"), messages, args.batch_items)
            ratios.append(ours / raw)
            print(f"raw COPY of ready tuples      {raw:10,.0f} samples/s")
            print(f"ingest write path (in process){ours:10,.0f} samples/s  ratio {ours / raw:.2f}")
        print(f"median ratio of {args.repeat}: {statistics.median(ratios):.2f} (target >= 0.50)")
        if args.in_process:
            print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            return
        one, cpu1 = through_broker(fresh_db(server, "one"), messages, 1, tmp)
        print(
            f"1 worker via mosquitto        {one:10,.0f} samples/s  (target >= 5,000); "
            f"worker CPU {cpu1 * 1e6:.0f} us/sample = {1 / cpu1:,.0f} samples per CPU-second"
        )
        two, cpu2 = through_broker(fresh_db(server, "two"), messages, 2, tmp)
        print(
            f"2 workers via mosquitto       {two:10,.0f} samples/s  {two / one:.2f}x "
            f"(target >= 1.6x where the cores allow); workers' CPU {cpu2 * 1e6:.0f} us/sample"
        )
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
