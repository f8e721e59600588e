"""The sync task: keep a broker connection, drain the outbox, answer commands.

``await Syncer(settings, worker, alerts).run(stop)`` never raises: an unreachable broker, a DNS
or TLS failure is logged (at most once a minute while it lasts) and retried with capped back-off
and jitter while the data stays in SQLite. On a clean stop it publishes the retained ``offline``
state; a crash leaves that to the broker through the last will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from bess_edge.model import now_ms
from bess_edge.store import SITE_DEVICE, Cycle
from bess_edge.sync import commands
from bess_edge.sync.client import FIRST_RETRY_S, Backoff, Inbound, MqttLink, RateLimitedLog
from bess_edge.sync.outbox import Drainer
from bess_edge.sync.payload import (
    REPLY_SCHEMA,
    STATE_SCHEMA,
    STREAMS,
    Encoder,
    command_topic,
    dumps,
    reply_topic,
    state_topic,
)

if TYPE_CHECKING:
    from bess_edge.alerts import AlertEngine
    from bess_edge.config import Settings
    from bess_edge.daemon import StoreWorker

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 2.0  # for the PUBACK of the offline state on a clean stop
PING_CACHE_S = 1.0
COMMAND_QUEUE = 64  # commands waiting beyond this are refused (a flood must not eat memory)
BUSY_ERROR = f"busy: {COMMAND_QUEUE} commands are waiting; send it again later"


class Syncer:
    def __init__(
        self,
        settings: Settings,
        worker: StoreWorker,
        alerts: AlertEngine,
        device_info: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = cfg = settings.mqtt
        self.site = settings.site.id
        self.worker = worker
        self.alerts = alerts
        self.client_id = cfg.client_id or f"bess-edge-{self.site}"
        self.devices = {d.id for d in settings.devices} | {SITE_DEVICE}
        self.cmd_prefix = command_topic(cfg.topic_prefix, self.site, "")
        self.reply_prefixes = (self.cmd_prefix,) + (
            (cfg.reply_topic_prefix.rstrip("/") + "/",) if cfg.reply_topic_prefix else ()
        )
        self.link = MqttLink(
            cfg,
            self.client_id,
            will=lambda: (self._state_topic(), self._state("offline", "connection lost")),
            on_message=self._on_message,
            on_puback=self._on_puback,
        )
        self.drainer = Drainer(
            worker,
            Encoder(cfg.topic_prefix, self.site, cfg.encoding, cfg.max_message_bytes, device_info),
            cfg.max_inflight,
            cfg.backlog_max_bytes_s,
            cfg.linger_s,
        )
        self.commands: asyncio.Queue[Inbound] = asyncio.Queue(COMMAND_QUEUE)
        self._busy_log = RateLimitedLog("mqtt command refused: too many waiting")
        self._waiters: dict[int, asyncio.Future[bool]] = {}
        self._pong_cache: tuple[float, dict[str, Any]] | None = None

    def _state_topic(self) -> str:
        return state_topic(self.cfg.topic_prefix, self.site)

    def _state(self, state: str, reason: str) -> bytes:
        doc = {
            "schema": STATE_SCHEMA,
            "site": self.site,
            "state": state,
            "reason": reason,
            "ts_ms": now_ms(),
            "client_id": self.client_id,
        }
        return dumps(doc)

    # -- the task ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        worker = asyncio.create_task(self._command_worker(), name="sync:commands")
        try:
            await self._connect_loop(stop)
            await self._clean_stop()
        except asyncio.CancelledError:
            self._abort()
            # Rows the broker acknowledged are deleted even now: else every one is sent again
            # after the restart (thousands under a backlog).
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)  # PUBACKs handed over before the network thread stopped
                await self.drainer.flush_acks()
            raise
        except Exception:  # a bug here must not take the daemon down: data stays buffered
            log.exception("sync stopped by an unexpected error; data stays buffered")
            self._abort()
        finally:
            worker.cancel()

    async def _connect_loop(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        backoff = Backoff(FIRST_RETRY_S, cfg.reconnect_max_s)
        failures = RateLimitedLog()
        broker = f"{cfg.host}:{cfg.port}"
        while not stop.is_set():
            attempt = asyncio.ensure_future(self.link.connect())
            stopping = asyncio.ensure_future(stop.wait())
            # A blackholed broker holds connect() for its timeouts: a stop must not wait.
            await asyncio.wait([attempt, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not attempt.done():
                attempt.cancel()
                return
            ok, why = attempt.result()
            if not ok:
                failures.failure(why, broker=broker, client_id=self.client_id)
                await _sleep_unless(stop, backoff.next_delay_s())
                continue
            backoff.reset()
            failures.success()
            log.info(
                "mqtt connected",
                extra={"broker": broker, "client_id": self.client_id, "protocol": cfg.protocol,
                       "tls": cfg.tls.enabled, "encoding": cfg.encoding},
            )  # fmt: skip
            self._fit_broker_packet_limit()
            self.link.subscribe(self.cmd_prefix + "#")
            self.link.publish(self._state_topic(), self._state("online", "connected"), retain=True)
            try:
                await self.drainer.run(self.link, stop)
            except Exception:
                log.exception("sync error; reconnecting")
            if not stop.is_set():
                await self.link.close_socket()
                await _sleep_unless(stop, backoff.next_delay_s())

    def _fit_broker_packet_limit(self) -> None:
        limit = self.link.broker_max_packet_bytes
        encoder = self.drainer.encoder
        # Room for the PUBLISH header, topic and properties.
        wanted = min(self.cfg.max_message_bytes, limit - 1024) if limit else None
        if wanted is not None and wanted < encoder.max_message_bytes:
            log.warning(
                "broker's maximum packet size is below mqtt.max_message_bytes; batching smaller",
                extra={"broker_max_packet_bytes": limit, "max_message_bytes": wanted},
            )
            encoder.max_message_bytes = max(1024, wanted)

    async def _clean_stop(self) -> None:
        if not self.link.connected.is_set():
            await self.link.close_socket()
            return
        loop = asyncio.get_running_loop()
        offline = self._state("offline", "shutdown")
        mid = self.link.publish(self._state_topic(), offline, retain=True)
        self._waiters[mid] = done = loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, SHUTDOWN_WAIT_S)
        await self.drainer.flush_acks()
        await self.link.close_socket()
        log.info("mqtt disconnected", extra={"messages_acked": self.drainer.messages_acked})

    def _abort(self) -> None:
        """Cancelled: best effort without awaiting (announce offline, close the socket)."""
        client = self.link.client
        if client is None:
            return
        with contextlib.suppress(Exception):
            if self.link.connected.is_set():
                self.link.publish(
                    self._state_topic(), self._state("offline", "shutdown"), retain=True
                )
            self.link.connected.clear()
            client.disconnect()
            client.loop_stop()

    def _on_puback(self, mid: int, ok: bool, reason: str) -> None:
        if self.drainer.on_puback(mid, ok, reason):
            return
        waiter = self._waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)

    # -- commands ---------------------------------------------------------------------------

    def _on_message(self, inbound: Inbound) -> None:
        if not inbound.topic.startswith(self.cmd_prefix):
            return
        verb = inbound.topic[len(self.cmd_prefix) :]
        if verb == "reply" or verb.endswith("/reply"):
            return  # a reply (ours or another site's tool's): not a command
        try:
            self.commands.put_nowait(inbound)
        except asyncio.QueueFull:
            self._refuse_busy(inbound)

    def _refuse_busy(self, inbound: Inbound) -> None:
        """A command beyond the queue is answered at once, so its sender knows to send it again
        rather than wait for a reply that never comes; the log gets a line a minute with the
        count, not one per command of a flood."""
        verb, topic, reply = self._envelope(inbound)
        with contextlib.suppress(commands.CommandError):  # a bad one: the default topic
            topic = self._reply_topic(inbound, topic)
        reply.update(ok=False, error=BUSY_ERROR, ts_ms=now_ms())
        self._busy_log.failure(BUSY_ERROR, verb=verb[:64])
        self._send_reply(topic, reply, inbound)

    async def _command_worker(self) -> None:
        while True:
            inbound = await self.commands.get()
            try:
                await self._handle(inbound)
            except Exception:
                log.exception("mqtt command handler failed", extra={"topic": inbound.topic})

    async def _handle(self, inbound: Inbound) -> None:
        self._send_reply(*await self.answer(inbound), inbound)

    def _send_reply(self, topic: str, reply: dict[str, Any], inbound: Inbound) -> None:
        if self.link.connected.is_set():
            self.link.publish(topic, dumps(reply), correlation_data=inbound.correlation_data)

    def _envelope(self, inbound: Inbound) -> tuple[str, str, dict[str, Any]]:
        """The command's verb, its default reply topic and the reply's common fields."""
        verb = inbound.topic[len(self.cmd_prefix) :]
        reply: dict[str, Any] = {
            "schema": REPLY_SCHEMA,
            "site": self.site,
            "verb": verb[:64],
            "id": commands.request_id(inbound.payload),
        }
        return verb, reply_topic(self.cfg.topic_prefix, self.site, verb), reply

    def _reply_topic(self, inbound: Inbound, default: str) -> str:
        """The MQTT 5 response topic when the command gave an allowed one (else CommandError)."""
        if inbound.response_topic is None:
            return default
        commands.check_response_topic(inbound.response_topic, self.reply_prefixes)
        return inbound.response_topic

    async def answer(self, inbound: Inbound) -> tuple[str, dict[str, Any]]:
        """The reply to a command and the topic it goes to. Never raises: whatever a command
        trips over, its sender gets an error reply (and the log a traceback)."""
        verb, topic, reply = self._envelope(inbound)
        try:
            topic = self._reply_topic(inbound, topic)
            command = commands.parse(verb, inbound.payload)
            reply["result"] = await self._execute(command)
            reply["ok"] = True
            level = logging.DEBUG if verb == "ping" else logging.INFO  # consumers ping each second
            log.log(level, "mqtt command done", extra={"verb": verb, "id": reply["id"],
                                                       "result": reply["result"]})  # fmt: skip
        except commands.CommandError as exc:
            reply["ok"], reply["error"] = False, str(exc)[:1024]
            log.warning("mqtt command refused", extra={"verb": verb[:64], "id": reply["id"],
                                                       "error": reply["error"]})  # fmt: skip
        except Exception as exc:
            log.exception("mqtt command failed", extra={"verb": verb[:64], "id": reply["id"]})
            reply["ok"] = False
            reply["error"] = f"internal error ({type(exc).__name__}); see the gateway's log"
        reply["ts_ms"] = now_ms()
        return topic, reply

    async def _execute(self, command: commands.Command) -> dict[str, Any]:
        if isinstance(command, commands.Ping):
            return await self._pong()
        if isinstance(command, commands.Ack):
            return await self._acknowledge(command)
        assert isinstance(command, commands.Republish)
        return await self._republish(command)

    async def _pong(self) -> dict[str, Any]:
        """Heads and depth scan the outbox: with a million-row backlog and several consumers
        pinging every second, answering from a copy at most PING_CACHE_S old spares the disk."""
        now = time.monotonic()
        if self._pong_cache is None or now - self._pong_cache[0] >= PING_CACHE_S:
            store = self.worker.store
            heads = await self.worker.call(store.published_heads)
            depth = await self.worker.call(store.outbox_depth)
            last = await self.worker.call(store.meta, "last_sync_ts_ms")
            self._pong_cache = (now, {
                "pong": True,
                "published_heads": heads,
                "outbox": depth,
                "last_sync_ts_ms": int(last) if last else None,
            })  # fmt: skip
        return self._pong_cache[1]

    async def _acknowledge(self, command: commands.Ack) -> dict[str, Any]:
        acknowledge = getattr(self.alerts, "acknowledge", None)
        if acknowledge is None:
            raise commands.CommandError("acknowledging alerts is not available in this build")
        try:
            transitions = acknowledge(command.alert_id, command.actor, command.note, now_ms())
        except KeyError:
            raise commands.CommandError(f"no active alert with id {command.alert_id}") from None
        except ValueError as exc:
            raise commands.CommandError(str(exc)) from None
        if transitions:
            await self.worker.call(self.worker.store.commit_cycles, [Cycle(alerts=transitions)])
        return {"alert_id": command.alert_id, "transitions": [t.transition for t in transitions]}

    async def _republish(self, command: commands.Republish) -> dict[str, Any]:
        if command.device not in self.devices:
            raise commands.CommandError(f"unknown device {command.device!r}")
        remaining = commands.MAX_REPUBLISH_ROWS
        requeued: dict[str, int] = {}
        for stream in [command.stream] if command.stream else list(STREAMS):
            count = await self.worker.call(
                partial(
                    self.worker.store.outbox_requeue,
                    command.device,
                    stream,
                    seq_first=command.seq_first,
                    seq_last=command.seq_last,
                    since_ms=command.since_ms,
                    until_ms=command.until_ms,
                    limit=remaining,
                )
            )
            requeued[stream] = count
            remaining -= count
        return {"device": command.device, "requeued": requeued, "truncated": remaining <= 0}


async def _sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
