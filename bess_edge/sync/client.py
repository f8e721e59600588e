"""The MQTT connection: paho-mqtt 2.x in its own network thread, driven from asyncio.

paho's own reconnect loop is switched off (``reconnect_on_failure=False``): this module connects,
backs off with jitter and logs *why* a connection failed (refused, TLS, DNS, bad credentials),
none of which paho's loop reports. paho keeps unacknowledged QoS 1 messages across reconnects of
the same client and re-sends them, so a PUBACK may arrive for a message sent before an outage.
Callbacks run on paho's thread and are handed to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bess_edge import metrics
from bess_edge.config import MqttConfig

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600  # the broker keeps our command subscription for an hour offline
CONNACK_TIMEOUT_S = 10.0
FIRST_RETRY_S = 0.5
REPEAT_LOG_EVERY_S = 60.0  # an unreachable broker logs once a minute, not once per retry


@dataclass(slots=True)
class Inbound:
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


class Backoff:
    """Capped exponential back-off with full jitter (AWS architecture blog, "Exponential
    Backoff And Jitter", 2015): a fleet of gateways does not reconnect in lock-step."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.attempt = 0

    def next_delay_s(self) -> float:
        ceiling = min(self.max_s, self.first_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class RateLimitedLog:
    """Logs the first of a run of identical failures, then one line a minute with a count."""

    def __init__(
        self, message: str = "mqtt connection failed; data stays buffered, retrying"
    ) -> None:
        self.message = message
        self.last_text: str | None = None
        self.last_logged = 0.0
        self.repeats = 0

    def failure(self, text: str, **fields: Any) -> None:
        now = time.monotonic()
        if text != self.last_text or now - self.last_logged >= REPEAT_LOG_EVERY_S:
            extra = {**fields, "error": text}
            if self.repeats:
                extra["failed_attempts_since_last_log"] = self.repeats
            log.warning(self.message, extra=extra)
            self.last_text, self.last_logged, self.repeats = text, now, 0
        else:
            self.repeats += 1

    def success(self) -> None:
        self.last_text, self.repeats = None, 0


def read_password(cfg: MqttConfig) -> str | None:
    """The password from the config/environment, else from ``password_file`` (one line)."""
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is not None:
        return cfg.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    return None


def apply_credentials(client: paho.Client, cfg: MqttConfig) -> None:
    """Username/password and TLS (CA, client certificate) from the config; raises OSError or
    ssl.SSLError for unreadable files."""
    if cfg.username is not None:
        client.username_pw_set(cfg.username, read_password(cfg))
    if cfg.tls.enabled:
        client.tls_set(
            ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
            certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.tls_insecure_set(cfg.tls.insecure_skip_verify)


class _PackedOnce(Properties):
    """Publish properties that stay as built: packed at the first publish, not at each (paho's
    pack walks every property name in Python, ~6 us a message)."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()
            object.__setattr__(self, "_packed", packed)  # Properties refuses unknown names
        return packed


class _ErrorText(logging.Handler):
    """The latest error line paho logged: it reports socket and TLS errors ("failed to receive
    on socket: ...") only there."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()


class MqttLink:
    """One MQTT client with a will; connect(), publish(), and events delivered to asyncio."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        will: Callable[[], tuple[str, bytes]],
        on_message: Callable[[Inbound], None],
        on_puback: Callable[[int, bool, str], None],
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.v5 = cfg.protocol == "5"
        self.will = will
        self.on_message = on_message
        self.on_puback = on_puback
        self.client: paho.Client | None = None
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[tuple[bool, str]] | None = None
        self._errors = _ErrorText()
        self.broker_max_packet_bytes: int | None = None
        # PUBACKs not yet handed to the event loop: a burst goes over in one call, as one
        # wake-up of the loop (a self-pipe write, a pass of the drainer) per PUBACK cost more
        # CPU than publishing the message.
        self._pubacks: list[tuple[int, bool, str]] = []
        self._pubacks_lock = threading.Lock()
        self._content_props: dict[str, Properties] = {}

    # -- set-up -----------------------------------------------------------------------------

    def _build(self) -> paho.Client:
        cfg = self.cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else False,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(0)
        apply_credentials(client, cfg)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # Through a logger at ERROR, not on_log: paho formats every packet's debug line for an
        # on_log callback (with its properties: a third of a live publish's CPU), while a logger
        # below its level costs one check.
        errors = logging.Logger(f"{__name__}.paho", logging.ERROR)
        errors.addHandler(self._errors)
        client.enable_logger(errors)
        return client

    # -- connecting -------------------------------------------------------------------------

    async def connect(self) -> tuple[bool, str]:
        """One connection attempt: (True, "") once CONNACK accepted, else (False, why)."""
        self._loop = asyncio.get_running_loop()
        try:
            if self.client is None:
                self.client = self._build()
        except (OSError, ValueError, ssl.SSLError) as exc:
            return False, f"TLS/credentials set-up failed: {exc}"
        client = self.client
        topic, payload = self.will()  # stamped with this connection's time
        client.will_set(topic, payload, qos=1, retain=True)
        self._errors.text = None
        self._connack = self._loop.create_future()
        try:
            await asyncio.to_thread(self._connect_blocking, client)
        except ssl.SSLCertVerificationError as exc:
            return False, f"TLS: broker certificate rejected: {exc.verify_message or exc}"
        except ssl.SSLError as exc:
            return False, f"TLS handshake failed: {exc}"
        except OSError as exc:
            return False, f"cannot reach {self.cfg.host}:{self.cfg.port}: {exc}"
        self.disconnected.clear()
        client.loop_start()
        try:
            accepted, why = await asyncio.wait_for(self._connack, CONNACK_TIMEOUT_S)
        except TimeoutError:
            accepted, why = False, "no CONNACK from the broker"
        if not accepted:
            await self.close_socket()
            return False, why
        self.connected.set()
        metrics.MQTT_CONNECTED.set(1)
        return True, ""

    def _connect_blocking(self, client: paho.Client) -> None:
        host, port, keepalive = self.cfg.host, self.cfg.port, int(self.cfg.keepalive_s)
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect(host, port, keepalive, clean_start=False, properties=props)
        else:
            client.connect(host, port, keepalive)

    async def close_socket(self) -> None:
        """Stop the network thread (the socket is already closed or gets closed)."""
        client = self.client
        if client is None:
            return
        self.connected.clear()  # ours, not a loss: no warning from _lost
        metrics.MQTT_CONNECTED.set(0)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self.disconnected.set()

    # -- using the connection --------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        correlation_data: bytes | None = None,
    ) -> int:
        """Queue a QoS 1 publish; returns its mid (paho re-sends it after a reconnect)."""
        assert self.client is not None
        props = None
        if self.v5 and correlation_data:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
            if content_type:
                props.ContentType = content_type
        elif self.v5 and content_type:
            props = self._content_type_props(content_type)
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        return info.mid

    def _content_type_props(self, content_type: str) -> Properties:
        """One set of properties per content type, shared by every publish (paho only reads
        it): building and packing it for each message cost ~17 us of a live message's CPU."""
        props = self._content_props.get(content_type)
        if props is None:
            props = self._content_props[content_type] = _PackedOnce(PacketTypes.PUBLISH)
            props.ContentType = content_type
        return props

    def subscribe(self, topic: str) -> None:
        assert self.client is not None
        if self.v5:
            # noLocal: never hear our own replies on cmd/<verb>/reply.
            options = paho.SubscribeOptions(qos=1, noLocal=True)
            self.client.subscribe(topic, options=options)
        else:
            self.client.subscribe(topic, qos=1)

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        # MQTT 5: a broker that announces a Maximum Packet Size disconnects on a larger one.
        self.broker_max_packet_bytes = getattr(props, "MaximumPacketSize", None)
        self._call(self._connack_result, not reason.is_failure, str(reason))

    def _connack_result(self, accepted: bool, why: str) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((accepted, f"broker refused the connection: {why}"))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        why = self._errors.text or str(reason)
        self._call(self._lost, why)

    def _lost(self, why: str) -> None:
        if self._connack is not None and not self._connack.done():
            if self.cfg.tls.enabled:
                # TLS 1.3 checks the client certificate after our side of the handshake: a
                # refusal shows up as an alert, or just EOF, on the first read.
                why = f"TLS: broker ended the session (does it trust our client certificate?) {why}"
            self._connack.set_result((False, f"connection closed before CONNACK: {why}"))
        if self.connected.is_set():
            log.warning("mqtt connection lost; data stays buffered", extra={"error": why})
        self.connected.clear()
        metrics.MQTT_CONNECTED.set(0)
        self.disconnected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._pubacks_lock:
            self._pubacks.append((mid, not reason.is_failure, str(reason)))
            first = len(self._pubacks) == 1
        if first:
            self._call(self._deliver_pubacks)

    def _deliver_pubacks(self) -> None:
        with self._pubacks_lock:
            pubacks, self._pubacks = self._pubacks, []
        for mid, ok, reason in pubacks:
            self.on_puback(mid, ok, reason)

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        inbound = Inbound(
            topic=msg.topic,
            payload=bytes(msg.payload),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
        )
        self._call(self.on_message, inbound)
