"""What paho's network thread tells the event loop: PUBACKs in order, a burst in one hand-over;
the reason a connection was lost, from paho's error log line."""

from __future__ import annotations

import asyncio
import threading
from unittest import mock

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bess_edge.config import MqttConfig
from bess_edge.sync.client import MqttLink


def test_a_burst_of_pubacks_is_handed_to_the_loop_at_once_and_in_order():
    received: list[tuple[int, bool, str]] = []

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        link = MqttLink(
            MqttConfig(),
            "gw",
            will=lambda: ("t", b""),
            on_message=lambda inbound: None,
            on_puback=lambda mid, ok, reason: received.append((mid, ok, reason)),
        )
        link._loop = loop
        handovers = 0
        real = loop.call_soon_threadsafe

        def counting(*args):  # type: ignore[no-untyped-def]
            nonlocal handovers
            handovers += 1
            return real(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        refused = ReasonCode(PacketTypes.PUBACK, identifier=0x97)  # quota exceeded
        success = ReasonCode(PacketTypes.PUBACK, identifier=0)

        def network_thread() -> None:
            for mid in range(1, 6):
                link._on_publish(None, None, mid, refused if mid == 3 else success, None)

        thread = threading.Thread(target=network_thread)
        thread.start()
        thread.join()
        await asyncio.sleep(0)
        link._on_publish(None, None, 6, success, None)  # after the hand-over: a new one
        await asyncio.sleep(0)
        return handovers

    handovers = asyncio.run(scenario())
    assert [(mid, ok) for mid, ok, _ in received] == [
        (1, True),
        (2, True),
        (3, False),
        (4, True),
        (5, True),
        (6, True),
    ]
    assert "Quota exceeded" in received[2][2]
    assert handovers == 2


def test_a_lost_connection_is_reported_with_the_socket_error_paho_logged():
    why: list[str] = []

    async def scenario() -> None:
        link = MqttLink(MqttConfig(), "gw", lambda: ("t", b""), lambda m: None, lambda *a: None)
        link._loop = asyncio.get_running_loop()
        link.connected.set()
        client = link._build()
        assert client.on_log is None  # debug lines of every packet are never formatted
        client._easy_log(paho.MQTT_LOG_DEBUG, "Sending PUBLISH (m%d)", 1)
        client._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", "[Errno 104] reset")
        with mock.patch("bess_edge.sync.client.log.warning") as warning:
            link._on_disconnect(client, None, None, "Unspecified error", None)
            await asyncio.sleep(0)
        why.append(warning.call_args.kwargs["extra"]["error"])

    asyncio.run(scenario())
    assert why == ["failed to receive on socket: [Errno 104] reset"]


def test_the_shared_publish_properties_pack_as_freshly_built_ones():
    link = MqttLink(MqttConfig(), "gw", lambda: ("t", b""), lambda m: None, lambda *a: None)
    for content_type in ("application/json", "application/zlib+json", "application/json"):
        shared = link._content_type_props(content_type)
        fresh = Properties(PacketTypes.PUBLISH)
        fresh.ContentType = content_type
        assert shared.pack() == shared.pack() == fresh.pack()
    assert link._content_type_props("application/json") is shared
