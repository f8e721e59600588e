"""Daemon footprint: resident memory after a minute of running, and the time from start to READY=1.

Runs the real ``bess-edge run`` as a subprocess, as systemd would (``NOTIFY_SOCKET`` is a socket
this script owns), for two sites: the demo config (one 16-cell simulated rack) and one
simulated rack of 1,000 cells, both publishing over MQTT to a mosquitto this script starts on
a free loopback port (so the sync path is part of the footprint). For each it prints the time
from spawn to READY=1 and the RSS after ``--duration`` seconds (peak RSS too), against the
targets (< 80 MB, < 2 s), and, as the reference measured in the same run, a bare Python
interpreter's start time and RSS and the RSS of merely importing the daemon's modules.

sqlite-utils imports pandas whenever it is installed, and a development venv may have it (here
pybamm pulls it in) while a site's venv, made with ``pip install`` of bess-edge alone, does
not: ~30 MB and ~1 s of start-up the daemon never uses. So by default the daemon runs with
pandas hidden, as on a site; ``--as-is`` runs it with whatever this venv has.

Usage: python benchmarks/footprint.py [--duration 60] [--as-is]    (about 2.5 minutes)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sync_bench import start_broker  # benchmarks/ is this script's directory

REPO = Path(__file__).resolve().parent.parent
TARGET_RSS_MB = 80.0
TARGET_READY_S = 2.0

RACK_1000 = """
[site]
id = "bench"
[[devices]]
id = "rack-1000"
driver = "sim"
poll_interval_s = 1.0
chemistry = "lfp"
capacity_ah = 280
[devices.options]
cells = 1000
profile = "daily"
time_scale = 60.0
seed = 7
"""


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of ``pid`` in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


HIDE_PANDAS = "import sys; sys.modules['pandas'] = None  # as in a site's venv\n"
# ``bess-edge run`` exactly as the console script starts it, with an optional prologue.
LAUNCH = "import sys\nfrom bess_edge.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def python_reference(code: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``python -c code``, best of two (the first warms caches).

    The peak is VmHWM from /proc, not getrusage's ru_maxrss, which Linux carries over exec from
    the forking parent (it would report this script's own size)."""
    probe = f"{code}\nprint(open('/proc/self/status').read())"
    runs = []
    for _ in range(2):
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        hwm = next(line for line in out.stdout.splitlines() if line.startswith("VmHWM:"))
        runs.append((time.monotonic() - started, int(hwm.split()[1]) / 1024))
    return min(runs)


def run_site(
    name: str, config: Path, workdir: Path, duration_s: float, prologue: str, broker_port: int
) -> dict[str, float]:
    address = f"\0bess-edge-footprint-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": "@" + address[1:],
        "BESS_EDGE__STORAGE__PATH": str(workdir / f"{name}.db"),
        "BESS_EDGE__LOGGING__FORMAT": "json",
        "BESS_EDGE__MQTT__ENABLED": "true",
        "BESS_EDGE__MQTT__HOST": "127.0.0.1",
        "BESS_EDGE__MQTT__PORT": str(broker_port),
    }
    log = (workdir / f"{name}.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", prologue + LAUNCH, "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        sock.settimeout(30)
        while b"READY=1" not in sock.recv(4096):
            pass
        ready_s = time.monotonic() - started
        time.sleep(max(duration_s - (time.monotonic() - started), 0))
        rss, peak = rss_mb(proc.pid)
        pandas = "pandas" in Path(f"/proc/{proc.pid}/maps").read_text()
        published = "mqtt connected" in (workdir / f"{name}.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sock.close()
    return {"ready_s": ready_s, "rss_mb": rss, "peak_mb": peak, "pandas": pandas,
            "published": published}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds before RSS is read")
    parser.add_argument("--as-is", action="store_true", help="let pandas load if installed")
    args = parser.parse_args()
    prologue = "" if args.as_is else HIDE_PANDAS

    bare_s, bare_mb = python_reference("pass")
    print(f"reference: bare python starts in {bare_s:.2f} s, {bare_mb:.1f} MB peak RSS")
    import_mb = {}
    for label, code in (("as installed here", ""), ("pandas hidden", HIDE_PANDAS)):
        s, import_mb[code] = python_reference(code + "import bess_edge.daemon")
        print(f"reference: importing the daemon ({label}) takes {s:.2f} s, "
              f"{import_mb[code]:.1f} MB peak RSS")  # fmt: skip
    print(f"daemon runs {'as installed here' if args.as_is else 'with pandas hidden'}:")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker, broker_port = start_broker(workdir)
        rack = workdir / "rack-1000.toml"
        rack.write_text(RACK_1000)
        sites = [("demo (16 cells)", REPO / "config" / "demo.toml"), ("1,000-cell rack", rack)]
        for label, config in sites:
            name = label.split()[0].strip(",")
            try:
                r = run_site(name, config, workdir, args.duration, prologue, broker_port)
            except BaseException:
                broker.kill()
                raise
            print(
                f"{label:<16} READY=1 after {r['ready_s']:.2f} s "
                f"({r['ready_s'] / TARGET_READY_S:.2f} of the {TARGET_READY_S:g} s target, "
                f"{r['ready_s'] / bare_s:.1f}x a bare python start); "
                f"RSS after {args.duration:g} s {r['rss_mb']:.1f} MB "
                f"({r['rss_mb'] / TARGET_RSS_MB:.2f} of the {TARGET_RSS_MB:g} MB target, "
                f"{r['rss_mb'] / import_mb[prologue]:.2f}x the import-only RSS), "
                f"peak {r['peak_mb']:.1f} MB"
                + ("; pandas loaded" if r["pandas"] else "")
                + ("; publishing over MQTT" if r["published"] else "; MQTT NOT connected")
            )
        broker.kill()


if __name__ == "__main__":
    main()
