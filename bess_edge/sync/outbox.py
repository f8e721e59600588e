"""Draining the SQLite outbox over MQTT: alerts first, bounded in-flight, delete after PUBACK.

Per stream a cursor (the last outbox id handed out) and a short queue of built messages. Before
every message it publishes, the drainer asks whether the store has committed alert rows it has
not fetched yet (a counter in memory, no query), so a live alert waits for at most the messages
already in flight, however long the backlog. One call of :meth:`Drainer.fill` publishes at most
one window: under a backlog that never ends (loopback PUBACKs keep the window open) the loop
still comes back to delete acknowledged rows and to see a stop. Outbox rows are deleted only in
:meth:`Drainer.flush_acks`, after the broker's PUBACK (DESIGN invariant 1). Messages paho has not
seen acknowledged stay in its queue across reconnects and are re-sent by it; after a restart of
the daemon the cursors start from zero and every row still in the outbox is sent again, so
delivery is at-least-once and the subscriber de-duplicates by seq.

Live, a message per device and poll costs far more CPU than the poll's own work (publish, PUBACK,
thread hand-offs): with ``linger_s`` (like Kafka's ``linger.ms``) a drained telemetry or
diagnostics stream waits up to that long for more rows, which then go several polls a message.
The rows wait in the outbox, not in memory. Alerts never wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from bess_edge import metrics
from bess_edge.model import now_ms
from bess_edge.sync.payload import CONTENT_TYPE, STREAMS, Encoder, Message

if TYPE_CHECKING:
    from bess_edge.daemon import StoreWorker
    from bess_edge.sync.client import MqttLink

log = logging.getLogger(__name__)

# Acknowledged rows are deleted in one transaction at most this long after the first PUBACK, or
# sooner once this many are waiting: one DELETE per window would put an fsync per few messages
# on the store thread, which the polls' commits share; live, a second's burst of messages is
# one DELETE. Rows acknowledged but not yet deleted are sent again after a crash
# (at-least-once), never lost.
ACK_FLUSH_S = 0.25
ACK_FLUSH_ROWS = 2000
MAX_FETCH_ROWS = 2000
ENCODERS = 2  # fetched batches encoded at once, per stream
# Fetches this small are encoded on the loop, not in a thread: a hand-off to a thread and back
# costs ~50 us of CPU, two 16-cell racks' encoding. A live round of 32 16-cell racks holds the
# loop ~0.8 ms; a backlog's large fetches still go to threads, two at once.
ENCODE_ON_LOOP_ROWS = 32
PREFETCH_BELOW = 2  # queued messages of a stream at which the next batch is fetched ahead


class TokenBucket:
    """Bytes per second for backlog (non-alert) messages; ``None`` rate means unlimited."""

    def __init__(self, rate_bytes_s: float | None) -> None:
        self.rate = rate_bytes_s
        self.tokens = rate_bytes_s or 0.0
        self.stamp = time.monotonic()

    def take(self, size: int) -> bool:
        if self.rate is None:
            return True
        now = time.monotonic()
        # One second of burst: enough for one large message at any sensible rate.
        self.tokens = min(max(self.rate, size), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < size:
            return False
        self.tokens -= size
        return True

    def wait_s(self, size: int) -> float:
        """After a refused :meth:`take`: how long until ``size`` bytes are there."""
        return (size - self.tokens) / self.rate if self.rate else 0.0


class Drainer:
    def __init__(
        self,
        worker: StoreWorker,
        encoder: Encoder,
        max_inflight: int,
        backlog_bytes_s: float | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self.worker = worker
        self.encoder = encoder
        self.max_inflight = max_inflight
        self.bucket = TokenBucket(backlog_bytes_s)
        self.cursor = dict.fromkeys(STREAMS, 0)
        self.queued: dict[str, deque[Message]] = {s: deque() for s in STREAMS}
        # Fetched rows being encoded in threads, oldest first; each lands in the queue in order.
        self.encoding: dict[str, deque[asyncio.Task[None]]] = {s: deque() for s in STREAMS}
        self.rows_per_message = dict.fromkeys(STREAMS, 64.0)
        self.inflight: dict[int, Message] = {}
        self.acked_ids: list[int] = []
        self.first_acked_mono = 0.0  # when acked_ids got its first id since the last flush
        # Set by what gives the drainer work: a commit of outbox rows (StoreWorker), a PUBACK,
        # a stop or a lost connection, and the timer for the earliest deadline of a pass
        # (wake_at_mono: a linger's end, the acks' flush, the byte rate's refill). No polling.
        self.wake = asyncio.Event()
        self.wake_at_mono = math.inf
        # The store's outbox_rows_committed[stream] when a fetch last reached the stream's end:
        # while it has not changed there is nothing new to fetch (no query at every PUBACK).
        self.drained = dict.fromkeys(STREAMS, -1)
        self.linger_s = linger_s
        # When a fetch last reached the stream's end (-inf: it did not): the linger's start.
        self.reached_end_mono = dict.fromkeys(STREAMS, -math.inf)
        # The counters' children looked up once (labels() takes a lock and builds a key).
        self.published = {s: metrics.MQTT_PUBLISHED.labels(s) for s in STREAMS}
        self.messages_acked = 0
        self.items_acked = 0
        self.bytes_acked = 0

    # -- events -----------------------------------------------------------------------------

    def on_puback(self, mid: int, ok: bool, reason: str) -> bool:
        """A PUBACK from the broker; False if ``mid`` is not one of ours."""
        message = self.inflight.pop(mid, None)
        if message is None:
            return False
        if ok:
            self.published[message.stream].inc()
            self._settled(message.outbox_ids)
            self.messages_acked += 1
            self.items_acked += len(message.outbox_ids)
            self.bytes_acked += len(message.payload)
        else:
            # e.g. 0x97 quota exceeded, 0x95 packet too large: kept, tried again later.
            log.warning(
                "broker refused a message; it stays in the outbox",
                extra={"topic": message.topic, "reason": reason, "bytes": len(message.payload)},
            )
            self.queued[message.stream].appendleft(message)
        self.wake.set()
        return True

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, link: MqttLink, stop: asyncio.Event) -> None:
        """Publish until the connection drops or ``stop`` is set."""
        loop = asyncio.get_running_loop()
        # One waiter each for the whole run, not three tasks every pass: a pass per PUBACK adds
        # up to a noticeable share of the CPU of a live poll.
        ends = [asyncio.ensure_future(e.wait()) for e in (link.disconnected, stop)]
        for end in ends:
            end.add_done_callback(lambda _: self.wake.set())
        self.worker.outbox_listeners.append(self.wake.set)
        try:
            while link.connected.is_set() and not stop.is_set():
                self.wake.clear()
                self.wake_at_mono = math.inf
                if self._acks_due():
                    await self.flush_acks()
                await self.fill(link)
                # Once a pass, not at every publish and PUBACK: a pass follows every PUBACK.
                metrics.MQTT_INFLIGHT.set(len(self.inflight))
                if self.acked_ids:
                    self._wake_by(self.first_acked_mono + ACK_FLUSH_S)
                timer = None
                if self.wake_at_mono < math.inf:
                    delay_s = max(0.0, self.wake_at_mono - time.monotonic())
                    timer = loop.call_later(delay_s, self.wake.set)
                await self.wake.wait()
                if timer is not None:
                    timer.cancel()
        finally:
            self.worker.outbox_listeners.remove(self.wake.set)
            for end in ends:
                end.cancel()
        for stream in STREAMS:
            await self._landed(stream, wait="all")  # queued for the next connection
        await self.flush_acks()

    def _wake_by(self, at_mono: float) -> None:
        self.wake_at_mono = min(self.wake_at_mono, at_mono)

    def _settled(self, outbox_ids: list[int]) -> None:
        """Rows to delete: acknowledged, or with nothing left to send."""
        if not self.acked_ids:
            self.first_acked_mono = time.monotonic()
        self.acked_ids.extend(outbox_ids)

    def _acks_due(self) -> bool:
        return bool(self.acked_ids) and (
            len(self.acked_ids) >= ACK_FLUSH_ROWS
            or time.monotonic() - self.first_acked_mono >= ACK_FLUSH_S
        )

    async def flush_acks(self) -> None:
        if self.acked_ids:
            ids, self.acked_ids = self.acked_ids, []
            try:
                await self.worker.call(self.worker.store.outbox_delete, ids, now_ms())
            except BaseException:
                # A cancel while the store thread was busy with something else drops the
                # DELETE before it ran: the ids go back for the next flush (the cancelled
                # sync's last one), else every acknowledged row is sent again after a restart.
                self.acked_ids = ids + self.acked_ids
                raise

    async def fill(self, link: MqttLink) -> None:
        """Publish until the window is full, at most one window's worth of messages."""
        content_type = CONTENT_TYPE[self.encoder.encoding]
        for _ in range(self.max_inflight):
            if len(self.inflight) >= self.max_inflight or not link.connected.is_set():
                return
            if self._alerts_due():
                await self._fetch_alerts()
            message = await self._next()
            if message is None:
                return
            if message.stream != "alerts" and (
                self._alerts_due() or not self.bucket.take(len(message.payload))
            ):
                # An alert committed while this message was being fetched goes out first.
                self.queued[message.stream].appendleft(message)
                if not self._alerts_due():  # the backlog's byte rate is used up for now
                    self._wake_by(time.monotonic() + self.bucket.wait_s(len(message.payload)))
                    return
                continue
            if _too_large(message, link.broker_max_packet_bytes):
                continue
            mid = link.publish(message.topic, message.payload, content_type=content_type)
            self.inflight[mid] = message
        self.wake.set()  # a window's worth a call: the next pass goes on, after the loop ran

    def _alerts_due(self) -> bool:
        return self.worker.store.outbox_rows_committed["alerts"] != self.drained["alerts"]

    async def _fetch_alerts(self) -> None:
        """Fetch and encode every alert row not yet seen, before any backlog message goes out."""
        while self._alerts_due():
            await self._fetch("alerts", 0)
            await self._landed("alerts", wait="all")

    async def _next(self) -> Message | None:
        for stream in STREAMS:
            queue = self.queued[stream]
            if stream != "alerts":
                await self._landed(stream)
                if not queue and not self.encoding[stream]:
                    await self._fetch(stream, self.max_inflight - len(self.inflight))
                await self._landed(stream, wait="messages")
                # Encode ahead while the queued messages go out (see _fetch).
                if len(queue) <= PREFETCH_BELOW and len(self.encoding[stream]) < ENCODERS:
                    await self._fetch(stream, self.max_inflight)
            if queue:
                return queue.popleft()
        return None

    async def _landed(
        self, stream: str, wait: Literal["finished", "messages", "all"] = "finished"
    ) -> None:
        """Take in the finished encodings, oldest first, raising their errors; also wait for the
        unfinished ones until the stream has messages queued, or for all of them."""
        pending, queue = self.encoding[stream], self.queued[stream]
        while pending and (
            pending[0].done() or wait == "all" or (wait == "messages" and not queue)
        ):
            await pending.popleft()

    async def _fetch(self, stream: str, free_slots: int) -> None:
        """Fetch the stream's next rows and start encoding them in a thread.

        Encoding a 1,000-cell sample takes ~100 µs (numpy and zlib, which release the GIL), far
        more than fetching or publishing it: with two encodings under way and publishing going
        on meanwhile, a backlog drain uses both cores of a site controller, not one in turn.
        """
        committed = self.worker.store.outbox_rows_committed[stream]
        if committed == self.drained[stream]:
            return
        if self._lingers(stream, committed):
            self._wake_by(self.reached_end_mono[stream] + self.linger_s)
            return
        # A backlog half a window at a time: alerts are looked for between fetches. Rows committed
        # since the stream was drained (live, after a linger or not), all of them: each device's
        # go in one message, and a round of 20 racks' polls is one fetch and one encoding, not
        # two of each (a thread hand-off is ~50 us of CPU).
        wanted = max(1, free_slots // 2) * self.rows_per_message[stream]
        if stream != "alerts" and self.reached_end_mono[stream] > -math.inf:
            wanted = MAX_FETCH_ROWS
        limit = int(min(MAX_FETCH_ROWS, max(16, wanted)))
        rows = await self.worker.call(
            self.worker.store.outbox_fetch, stream, self.cursor[stream], limit
        )
        if len(rows) < limit:
            self.drained[stream] = committed  # rows committed during the query: fetched next
            self.reached_end_mono[stream] = time.monotonic()
        else:
            self.reached_end_mono[stream] = -math.inf  # a backlog: no linger until it is sent
        if not rows:
            return
        self.cursor[stream] = rows[-1]["outbox_id"]
        orphans = [r["outbox_id"] for r in rows if r["data"] is None]
        if orphans:  # the data row was dropped by the storage cap: nothing left to send
            self._settled(orphans)
        pending = self.encoding[stream]
        earlier = pending[-1] if pending else None
        pending.append(asyncio.create_task(self._encode(stream, rows, earlier)))

    def _lingers(self, stream: str, committed: int) -> bool:
        """Whether a drained stream's new rows wait for more: fewer than one fetch's worth
        committed since a fetch reached its end, less than ``linger_s`` ago. Alerts never do."""
        return (
            stream != "alerts"
            and committed - self.drained[stream] < MAX_FETCH_ROWS
            and time.monotonic() - self.reached_end_mono[stream] < self.linger_s
        )

    async def _encode(
        self, stream: str, rows: list[dict[str, Any]], earlier: asyncio.Task[None] | None
    ) -> None:
        if len(rows) <= ENCODE_ON_LOOP_ROWS:
            messages = list(self.encoder.messages(stream, rows))
        else:
            messages = await asyncio.to_thread(lambda: list(self.encoder.messages(stream, rows)))
        if earlier is not None:
            await earlier  # outbox order: messages queue in the order their rows were fetched
        if messages:
            sent_rows = sum(len(m.seqs) for m in messages)
            self.rows_per_message[stream] = max(1.0, sent_rows / len(messages))
        self.queued[stream].extend(messages)


def _too_large(message: Message, limit: int | None) -> bool:
    """A single item the broker would refuse (it disconnects us, and paho would re-send it
    after every reconnect): kept in the outbox and the store, not published, logged."""
    overhead = len(message.topic) + 64  # fixed header, topic length, properties
    if limit is None or len(message.payload) + overhead <= limit:
        return False
    log.error(
        "item larger than the broker's maximum packet size: not published, kept in the store",
        extra={"topic": message.topic, "seqs": message.seqs, "bytes": len(message.payload),
               "broker_max_packet_bytes": limit},
    )  # fmt: skip
    return True
