"""One ``bess-edge ingest`` worker: an MQTT 5 shared subscription in, PostgreSQL out.

Threads: paho's network loop queues each message as it comes (manual acknowledgement: paho
sends no PUBACK by itself); a parse thread takes them in batches and validates them; the
worker's own thread writes one transaction per batch and only then acknowledges the batch's
messages. A message whose commit
failed is not acknowledged: it is retried while the database comes back, and if the worker
dies first the broker (or gap repair) delivers it again. Every :attr:`IngestConfig.tick_s` the
same thread refreshes its view of the fleet and, if it holds the lock, runs gap repair.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bess_edge.cloud import metrics
from bess_edge.cloud.config import CloudSettings
from bess_edge.cloud.messages import Batch, Parser, Refusal
from bess_edge.cloud.repair import Repairer
from bess_edge.cloud.schema import migrate
from bess_edge.cloud.writer import Writer
from bess_edge.sync.client import Backoff, apply_credentials
from bess_edge.sync.payload import dumps

log = logging.getLogger(__name__)

# 0: a worker's session ends with its connection. mosquitto keeps handing a shared subscription's
# share to a member whose session outlives it (a SIGKILLed worker's), so that share would wait
# there unacknowledged; with no session, gap repair asks for whatever a dead worker held.
SESSION_EXPIRY_S = 0
# The id of an ack the cloud sent (repair.py: "ack-<ack_requests.id>"): ASCII digits that fit
# bigint. str.isdigit() also passes "²" and 5,000 digits, on which int() raised in this thread.
ACK_ID = re.compile(r"ack-([0-9]{1,18})")


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # the connection it came on: a PUBACK goes back on that one only


@dataclass(slots=True)
class Prepared:
    """A batch parsed and validated, waiting for its transaction."""

    incoming: list[Incoming]  # everything to acknowledge after the commit
    parsed: list[Batch | Refusal]
    control: list[tuple[str, dict[str, Any]]]  # valid replies and states, for the write thread


class IngestWorker:
    def __init__(self, settings: CloudSettings, *, client_id: str | None = None) -> None:
        self.settings = settings
        self.cfg = settings.ingest
        self.client_id = client_id or f"bess-ingest-{uuid.uuid4().hex[:8]}"
        self.parser = Parser(self.cfg.prefix, self.cfg.max_payload_bytes)
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        # Parsing the next batch overlaps the database's work on this one (GIL released while
        # psycopg waits); two batches ahead at most, so memory stays bounded.
        self.ready: queue.Queue[Prepared] = queue.Queue(maxsize=2)
        self.generation = 0
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.client = self._build_client()
        self.writer: Writer | None = None
        self.repairer: Repairer | None = None
        self.db: list[psycopg.Connection] = []
        self.counts = {"messages": 0, "items": 0, "rows": 0, "dead_letters": 0, "batches": 0}

    # -- MQTT -------------------------------------------------------------------------------

    def _build_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(1, 5)
        apply_credentials(client, self.settings.mqtt)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def topics(self) -> list[str]:
        share, prefix = f"$share/{self.cfg.group}", self.cfg.prefix
        return [f"{share}/{prefix}/+/+/+", f"{share}/{prefix}/+/state",
                f"{share}/{prefix}/+/cmd/+/reply"]  # fmt: skip

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection", extra={"reason": str(reason)})
            return
        self.generation += 1
        # Every time: a broker restarted without persistence has forgotten the subscription.
        client.subscribe([(t, 1) for t in self.topics()])
        self.connected.set()
        log.info("connected to the broker", extra={"client_id": self.client_id})

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("broker connection lost", extra={"reason": str(reason)})

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.inbox.put(Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self.generation))

    def _ack(self, messages: list[Incoming]) -> None:
        for m in messages:
            if m.qos > 0 and m.generation == self.generation:
                self.client.ack(m.mid, m.qos)

    def send_command(self, site: str, verb: str, body: dict[str, Any]) -> None:
        """Publish ``cmd/<verb>`` to a site; the reply comes to the group's reply subscription."""
        base = f"{self.cfg.prefix}/{site}/cmd"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{base}/{verb}/reply"
        self.client.publish(f"{base}/{verb}", dumps({"id": uuid.uuid4().hex[:12]} | body),
                            qos=1, properties=props)  # fmt: skip
        if verb == "republish":
            metrics.REPUBLISH_REQUESTS.inc()

    # -- database ---------------------------------------------------------------------------

    def _connect_db(self) -> None:
        for conn in self.db:
            conn.close()
        url = self.cfg.database_url
        write = psycopg.connect(url, autocommit=True, connect_timeout=10)
        repair = psycopg.connect(url, autocommit=True, connect_timeout=10)
        self.db = [write, repair]
        migrate(write)
        self.writer = Writer(
            write,
            worker=self.client_id,
            retention_days=self.cfg.retention_days,
            auto_register_sites=self.cfg.auto_register_sites,
            from_first=self.cfg.from_first,
            max_seq_ahead=self.cfg.max_seq_ahead,
        )
        self.repairer = Repairer(repair, self.cfg, self.send_command)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Until :meth:`stop`: connect (retrying), then batches and ticks."""
        backoff = Backoff(0.5, 10.0)
        while not self.stopping.is_set():
            try:
                self._connect_db()
                break
            except psycopg.OperationalError as exc:
                log.warning("database unreachable", extra={"error": str(exc).strip()[:300]})
                self.stopping.wait(backoff.next_delay_s())
        mqtt = self.settings.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(mqtt.host, mqtt.port, int(mqtt.keepalive_s), properties=props)
        self.client.loop_start()
        preparer = threading.Thread(target=self._prepare_loop, name="ingest-parse", daemon=True)
        preparer.start()
        next_tick = time.monotonic()
        pending: Prepared | None = None
        while not self.stopping.is_set():
            if pending is None:
                with contextlib.suppress(queue.Empty):
                    pending = self.ready.get(timeout=max(0.0, next_tick - time.monotonic()))
            if pending is not None:
                try:
                    self._write(pending)
                    pending = None
                except psycopg.Error as exc:
                    self._database_failed(exc, backoff)
                    continue
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.cfg.tick_s
                try:
                    self._tick()
                except psycopg.Error as exc:
                    self._database_failed(exc, backoff)
        self.client.disconnect()
        self.client.loop_stop()
        preparer.join(5)
        for conn in self.db:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()

    def _database_failed(self, exc: psycopg.Error, backoff: Backoff) -> None:
        """Log, wait, reconnect; the batch in hand stays unacknowledged and is written again."""
        metrics.DB_ERRORS.inc()
        log.warning("database error, retrying the batch", extra={"error": str(exc).strip()[:300]})
        while not self.stopping.wait(backoff.next_delay_s()):
            try:
                self._connect_db()
                backoff.reset()
                return
            except psycopg.Error as again:
                log.warning("database unreachable", extra={"error": str(again).strip()[:300]})

    def _collect(self, timeout_s: float) -> list[Incoming]:
        """A batch: whatever arrives within batch_max_delay_s of the first message, up to
        batch_max_messages messages."""
        try:
            first = self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.cfg.batch_max_delay_s
        while len(batch) < self.cfg.batch_max_messages:
            left = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get_nowait() if left <= 0 else self.inbox.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _prepare_loop(self) -> None:
        while not self.stopping.is_set():
            batch = self._collect(0.2)
            if not batch:
                continue
            prepared = self._prepare(batch)
            while not self.stopping.is_set():
                try:
                    self.ready.put(prepared, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def _prepare(self, incoming: list[Incoming]) -> Prepared:
        prepared = Prepared(incoming, [], [])
        control_depth = self.cfg.prefix.count("/") + 2
        for m in incoming:
            if m.topic.endswith("/reply") or (
                m.topic.endswith("/state") and m.topic.count("/") == control_depth
            ):
                control = self.parser.control(m.topic, m.payload)
                if isinstance(control, str):
                    log.warning("control message refused", extra={"topic": m.topic,
                                                                  "reason": control})  # fmt: skip
                else:
                    prepared.control.append(control)
                continue
            message = self.parser.parse(m.topic, m.payload)
            if isinstance(message, Refusal):
                log.warning("message refused", extra={"topic": m.topic, "reason": message.reason})
            if message is not None:
                prepared.parsed.append(message)
        return prepared

    def _write(self, prepared: Prepared) -> None:
        assert self.writer is not None
        for kind, doc in prepared.control:
            if kind == "reply":
                self._reply(doc)
            else:
                self.writer.record_state(doc["site"], doc["state"], doc["ts_ms"])
        if prepared.parsed:
            result = self.writer.write_isolating(prepared.parsed)
            inserted = sum(result.inserted.values())
            for stream, n in result.inserted.items():
                metrics.ROWS.labels(stream).inc(n)
            metrics.DUPLICATES.inc(max(0, result.items - inserted - result.refused))
            metrics.DEAD_LETTERS.inc(result.refused)
            metrics.MESSAGES.inc(len(prepared.parsed))
            self.counts["items"] += result.items
            self.counts["rows"] += inserted
            self.counts["dead_letters"] += result.refused
        self.counts["messages"] += len(prepared.incoming)
        self.counts["batches"] += 1
        self._ack(prepared.incoming)  # after the commit: the point of the whole design

    def _reply(self, doc: dict[str, Any]) -> None:
        """A validated reply (:meth:`Parser.control`)."""
        assert self.writer is not None
        ok, verb, site = doc["ok"], doc["verb"], doc["site"]
        if not ok:
            log.warning("a gateway refused a command", extra={"site": site, "verb": verb,
                                                              "error": doc["error"]})  # fmt: skip
        if verb == "ping" and ok:
            self.writer.record_heads(site, doc["result"].get("published_heads") or {})
        elif verb == "ack" and (request := ACK_ID.fullmatch(str(doc["id"]))) is not None:
            result = "acknowledged" if ok else str(doc["error"])
            self.writer.record_ack(int(request[1]), result)

    def _tick(self) -> None:
        assert self.writer is not None and self.repairer is not None
        self.writer.refresh()
        if self.connected.is_set() and self.repairer.tick():
            metrics.GAP_SEQS.set(self.repairer.open_seqs)
            oldest = self.repairer.oldest_gap_ms
            metrics.OLDEST_GAP_AGE.set(
                0 if oldest is None else (time.time() * 1000 - oldest) / 1000
            )
        elif not self.repairer.leader:
            metrics.GAP_SEQS.set(-1)
