"""Backlog drain rate of bess_edge.sync against a bare paho-mqtt QoS 1 publisher, same run.

Builds a day (``--hours``) of 1 Hz samples of a 16-cell and a 1,000-cell rack directly with
``Store.commit_cycles``, starts mosquitto on a free loopback port, drains each backlog with the
real :class:`~bess_edge.sync.Syncer` (JSON, then compact) and compares it, in the same run,
with a bare paho QoS 1 publisher with the same in-flight window:

- the headline ratio (target >= 0.5): samples/s delivered by the Syncer, from SQLite, encoded,
  deleted after PUBACK, against the messages/s of a bare publisher sending each sample as one
  message of the same size from memory: what a publisher without batching would reach at best;
- for context, the bare publisher sending messages as large as our batches (~250 kB). It moves
  0.7-2 GB/s over loopback, which is memcpy, not a drain: reading, encoding and deleting that
  much from SQLite in Python is 10-100x slower, so that ratio is printed but is not a target.

Also prints the time to drain a day of each rack (target for 1,000 cells: < 5 min) and bytes on
the wire per cell value (compact target: <= 1 byte per cell voltage).

    .venv/bin/python benchmarks/sync_bench.py [--hours 24] [--cells 16 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bess_edge.alerts import AlertEngine
from bess_edge.config import Settings
from bess_edge.daemon import StoreWorker
from bess_edge.model import Reading
from bess_edge.store import Cycle, Store
from bess_edge.sync import Syncer
from bess_edge.sync.payload import Encoder

MAX_INFLIGHT = 32
START_MS = 1_790_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def build_backlog(path: Path, device: str, cells: int, samples: int) -> float:
    """A day of 1 Hz readings committed in batches, as the daemon's store would hold them."""
    store = Store(path, max_size_mb=8192, synchronous="normal")
    rng = np.random.default_rng(7)
    base = 3.30 + 0.005 * rng.standard_normal(cells)
    sensors = max(1, cells // 8)
    t0 = time.perf_counter()
    batch = 1000
    for start in range(0, samples, batch):
        cycles = []
        for i in range(start, min(samples, start + batch)):
            # Sensor noise as the sim driver makes it: 1 mV sigma, 1 mV resolution.
            cell_v = np.round(base + 0.001 * rng.standard_normal(cells), 3)
            temps = np.round(25 + 0.05 * rng.standard_normal(sensors), 2)
            cycles.append(Cycle(reading=Reading(
                device, ts_ms=START_MS + 1000 * i, pack_voltage_v=float(cell_v.sum()),
                pack_current_a=20.0, cell_voltage_v=cell_v, cell_temperature_c=temps)))  # fmt: skip
        store.commit_cycles(cycles)
    store.close()
    return time.perf_counter() - t0


def cell_voltage_bytes(db: Path, device: str, cells: int, rows: int = 600) -> float:
    """What the cell voltages add to compact messages, per cell value: the same (drained,
    re-queued) rows encoded with and without their cell_voltage_v arrays."""
    store = Store(db, max_size_mb=8192, synchronous="normal")
    store.outbox_requeue(device, "telemetry", seq_first=1, seq_last=rows)
    fetched = store.outbox_fetch("telemetry", 0, rows)
    store.close()
    with_cells = Encoder("b", "s", "compact", 256 * 1024).messages("telemetry", fetched)
    size_with = sum(len(m.payload) for m in with_cells)
    for row in fetched:
        row["data"] = {**row["data"], "cell_voltage_v": None}
    without = Encoder("b", "s", "compact", 256 * 1024).messages("telemetry", fetched)
    return (size_with - sum(len(m.payload) for m in without)) / (len(fetched) * cells)


def settings_for(db: Path, port: int, device: str, encoding: str) -> Settings:
    return Settings(
        site={"id": "bench"},
        storage={"path": str(db)},
        devices=[{"id": device, "driver": "sim"}],
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "encoding": encoding,
              "max_inflight": MAX_INFLIGHT, "client_id": f"bench-{encoding}"},
    )  # fmt: skip


async def drain(settings: Settings, samples: int) -> dict[str, float]:
    store = Store(settings.storage.path, max_size_mb=8192, synchronous="normal")
    worker = StoreWorker(store)
    syncer = Syncer(settings, worker, AlertEngine([], 0, []))
    stop = asyncio.Event()
    task = asyncio.create_task(syncer.run(stop))
    t0 = time.perf_counter()
    while syncer.drainer.items_acked < samples:
        await asyncio.sleep(0.05)
        if time.perf_counter() - t0 > 1800:
            raise RuntimeError("drain took over 30 minutes")
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    depth = await worker.call(store.outbox_depth)
    worker.shutdown()
    d = syncer.drainer
    assert not depth, depth
    return {"s": elapsed, "messages": d.messages_acked, "bytes": d.bytes_acked}


def bare_paho(port: int, messages: int, size: int) -> float:
    """messages/s of a plain QoS 1 publisher with the same window and payload size."""
    done = threading.Event()
    acked = 0

    def on_publish(client, userdata, mid, reason, props) -> None:
        nonlocal acked
        acked += 1
        if acked == messages:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="bare")
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = bytes(size)
    t0 = time.perf_counter()
    for _ in range(messages):
        client.publish("bench/bare", payload, qos=1)
    done.wait(1800)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--cells", type=int, nargs="+", default=[16, 1000])
    args = parser.parse_args()
    samples = int(args.hours * 3600)
    workdir = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    broker, port = start_broker(workdir)
    try:
        for cells in args.cells:
            device = f"rack-{cells}"
            print(f"\n{cells}-cell rack, {samples} samples ({args.hours:g} h at 1 Hz)")
            for encoding in ("json", "compact"):
                db = workdir / f"{device}-{encoding}.db"
                built_s = build_backlog(db, device, cells, samples)
                result = asyncio.run(drain(settings_for(db, port, device, encoding), samples))
                msgs_s = result["messages"] / result["s"]
                samples_s = samples / result["s"]
                mean_size = int(result["bytes"] / result["messages"])
                sample_size = int(result["bytes"] / samples)
                # Same-size messages: what the transport allows for our batches.
                bare_batch = bare_paho(port, max(500, int(result["messages"])), mean_size)
                # One message per sample: the naive publisher a batch must beat.
                bare_single = bare_paho(port, min(samples, 20_000), sample_size)
                per_cell = result["bytes"] / (samples * cells)
                day_s = result["s"] * 86_400 / samples
                print(
                    f"  {encoding}: drained {samples} samples in {result['s']:.1f} s "
                    f"(backlog built in {built_s:.1f} s); a day drains in {day_s:.0f} s "
                    f"(target < 300 s); {per_cell:.2f} B per cell value on the wire\n"
                    f"    samples: {samples_s:8.0f} samples/s; bare paho, one {sample_size} B "
                    f"message per sample: {bare_single:8.0f} msg/s -> ratio "
                    f"{samples_s / bare_single:.2f} (target >= 0.5)\n"
                    f"    batches: {msgs_s:8.0f} msg/s of {mean_size} B; bare paho, same size: "
                    f"{bare_batch:8.0f} msg/s -> ratio {msgs_s / bare_batch:.2f} (transport "
                    "ceiling, not a target)"
                )
                if encoding == "compact":
                    marginal = cell_voltage_bytes(db, device, cells)
                    print(f"    compact: {marginal:.2f} B per cell voltage (bytes the cell "
                          "voltages add to a message; target <= 1)")  # fmt: skip
                db.unlink()
    finally:
        broker.kill()
        broker.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
