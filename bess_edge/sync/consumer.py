"""The reference cloud-side consumer behind ``bess-edge subscribe``.

It subscribes to every stream of a site, validates each payload against the JSON Schemas in
``bess_edge/schemas/``, de-duplicates by ``(site, device, stream, seq)``, and repairs gaps: it
pings the gateway for the seqs it has published (``published_heads``), and asks for any seq it
is missing (between its first seq, or 1 with ``from_first``, and that head) with
``cmd/republish``. A broker that is SIGKILLed loses what it had acknowledged but not delivered;
this loop is what turns at-least-once publishing into a complete copy.

With a shared subscription (``$share/<group>/...``) each consumer of the group receives only a
share of the messages, so gap repair is off: de-duplicate and look for gaps downstream, where the
group's outputs meet.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bess_edge.config import Settings
from bess_edge.sync.client import apply_credentials
from bess_edge.sync.payload import STREAMS, decode, dumps

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (site, device, stream)


def load_validators() -> dict[str, Any]:
    """A jsonschema validator per schema file name (telemetry, alerts, ..., state, reply)."""
    try:
        import jsonschema
    except ImportError:
        raise SystemExit(
            "payload validation needs jsonschema: pip install 'bess-edge[cloud]'"
        ) from None
    validators = {}
    for path in resources.files("bess_edge").joinpath("schemas").iterdir():
        if path.name.endswith(".json"):
            schema = json.loads(path.read_text(encoding="utf-8"))
            validators[path.name.removesuffix(".json")] = jsonschema.Draft202012Validator(schema)
    return validators


class SeqSet:
    """Sorted disjoint inclusive intervals of seqs: cheap membership, gaps and counts."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, seq: int) -> bool:
        """Add ``seq``; False if it was already there (a duplicate)."""
        i = bisect.bisect_right(self.starts, seq) - 1
        if i >= 0 and self.ends[i] >= seq:
            return False
        joins_left = i >= 0 and self.ends[i] == seq - 1
        joins_right = i + 1 < len(self.starts) and self.starts[i + 1] == seq + 1
        if joins_left and joins_right:
            self.ends[i] = self.ends[i + 1]
            del self.starts[i + 1], self.ends[i + 1]
        elif joins_left:
            self.ends[i] = seq
        elif joins_right:
            self.starts[i + 1] = seq
        else:
            self.starts.insert(i + 1, seq)
            self.ends.insert(i + 1, seq)
        return True

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.starts, seq) - 1
        return i >= 0 and self.ends[i] >= seq

    def __len__(self) -> int:
        return sum(e - s + 1 for s, e in zip(self.starts, self.ends, strict=True))

    @property
    def first(self) -> int | None:
        return self.starts[0] if self.starts else None

    @property
    def last(self) -> int | None:
        return self.ends[-1] if self.ends else None

    def gaps(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Missing inclusive ranges within [start, stop]."""
        out, cursor = [], start
        for s, e in zip(self.starts, self.ends, strict=True):
            if e < cursor:
                continue
            if s > stop:
                break
            if s > cursor:
                out.append((cursor, s - 1))
            cursor = max(cursor, e + 1)
        if cursor <= stop:
            out.append((cursor, stop))
        return out


@dataclass(slots=True)
class GapState:
    first_seen_mono: float
    last_request_mono: float | None = None


@dataclass
class Summary:
    messages: int = 0
    items: int = 0
    duplicates: int = 0
    invalid: int = 0
    republish_requests: int = 0
    gap_seqs_seen: int = 0  # seqs ever found missing past the grace time
    gap_seqs_repaired: int = 0  # of those, how many arrived later
    gap_seqs_open: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "errors"}
        out["first_errors"] = self.errors[:5]
        return out


class Consumer:
    """Subscribes, validates, de-duplicates, repairs gaps; ``on_item`` gets each new item."""

    def __init__(
        self,
        settings: Settings,
        *,
        site: str | None = None,
        shared_group: str | None = None,
        from_first: bool = False,
        repair: bool = True,
        grace_s: float = 2.0,
        retry_s: float = 10.0,
        client_id: str | None = None,
        on_item: Callable[[str, str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = settings.mqtt
        self.site = site or settings.site.id
        self.shared_group = shared_group
        self.from_first = from_first
        self.repair = repair and shared_group is None
        self.grace_s, self.retry_s = grace_s, retry_s
        self.on_item = on_item
        self.validators = load_validators()
        self.seen: dict[Key, SeqSet] = {}
        self.heads: dict[Key, int] = {}
        self.gaps: dict[tuple[Key, int], GapState] = {}  # (key, missing seq) -> since when
        self.outbox_empty = False  # from the last ping reply
        self.ping_replies = 0
        self.states: list[dict[str, Any]] = []
        self.summary = Summary()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = self._build(client_id or f"bess-edge-sub-{uuid.uuid4().hex[:8]}")

    # -- MQTT -------------------------------------------------------------------------------

    def _build(self, client_id: str) -> paho.Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.reconnect_delay_set(1, 5)
        apply_credentials(client, cfg)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = self._on_message
        return client

    def topics(self) -> list[str]:
        base = f"{self.cfg.topic_prefix}/{self.site}"
        data = [f"{base}/+/{stream}" for stream in STREAMS]
        if self.shared_group:
            data = [f"$share/{self.shared_group}/{t}" for t in data]
        return [*data, f"{base}/state", f"{base}/cmd/+/reply"]

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, int(self.cfg.keepalive_s))
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("subscriber connection refused", extra={"reason": str(reason)})
            return
        # Every time: a broker restarted without persistence has forgotten the subscriptions.
        client.subscribe([(t, 1) for t in self.topics()])
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            self._handle(msg.topic, bytes(msg.payload))
        except Exception as exc:  # a consumer that dies on one bad message is no reference
            with self.lock:
                self.summary.invalid += 1
                self.summary.errors.append(f"{msg.topic}: {exc!r}")

    # -- messages ---------------------------------------------------------------------------

    def _handle(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/reply"):
            self._reply(json.loads(payload))
            return
        if topic.endswith("/state"):
            doc = json.loads(payload)
            self._validate("state", doc, topic)
            with self.lock:
                self.states.append(doc)
            return
        doc = decode(payload)
        if not self._validate(doc.get("stream", ""), doc, topic):
            return
        key = (doc["site"], doc["device"], doc["stream"])
        new_items = []
        with self.lock:
            self.summary.messages += 1
            seen = self.seen.setdefault(key, SeqSet())
            for item in doc["items"]:
                self.summary.items += 1
                if not seen.add(item["seq"]):
                    self.summary.duplicates += 1
                    continue
                new_items.append(item)
                self.summary.per_stream[key[2]] = self.summary.per_stream.get(key[2], 0) + 1
                gap = self.gaps.pop((key, item["seq"]), None)
                if gap is not None and gap.last_request_mono is not None:
                    self.summary.gap_seqs_repaired += 1
        if self.on_item is not None:
            for item in new_items:
                self.on_item(*key, item)

    def _validate(self, schema: str, doc: Any, topic: str) -> bool:
        validator = self.validators.get(schema)
        errors = [] if validator is None else list(validator.iter_errors(doc))
        if validator is None or errors:
            reason = errors[0].message if errors else f"unknown stream {schema!r}"
            with self.lock:
                self.summary.invalid += 1
                self.summary.errors.append(f"{topic}: {reason[:300]}")
            log.warning("invalid payload", extra={"topic": topic, "error": reason[:300]})
            return False
        return True

    def _reply(self, doc: dict[str, Any]) -> None:
        self._validate("reply", doc, "reply")
        if doc.get("verb") != "ping" or not doc.get("ok"):
            if not doc.get("ok"):
                log.warning("command refused by the gateway", extra={"reply": doc})
            return
        result = doc["result"]
        with self.lock:
            self.ping_replies += 1
            self.outbox_empty = not any(result["outbox"].values())
            for device, streams in result["published_heads"].items():
                for stream, head in streams.items():
                    self.heads[(doc["site"], device, stream)] = head

    # -- gap repair -------------------------------------------------------------------------

    def tick(self) -> None:
        """Ping for heads, find gaps, ask for the ones older than the grace time. Call every
        second or so."""
        if not self.connected.is_set():
            return
        self._command("ping", {})
        if not self.repair:
            return
        now = time.monotonic()
        with self.lock:
            gaps = self._open_gaps()
            self.summary.gap_seqs_open = sum(last - first + 1 for _, first, last in gaps)
            requests = [g for g in gaps if self._due(*g, now)]
        for (site, device, stream), first, last in requests:
            self._command(
                "republish",
                {"device": device, "stream": stream, "seq_first": first, "seq_last": last},
                site=site,
            )

    def _open_gaps(self) -> list[tuple[Key, int, int]]:
        """Every missing range up to the newer of the last seq seen and the gateway's head.
        Caller holds the lock."""
        gaps: list[tuple[Key, int, int]] = []
        for key in set(self.seen) | set(self.heads):
            seen = self.seen.get(key) or SeqSet()
            start = 1 if self.from_first else seen.first
            stop = max(seen.last or 0, self.heads.get(key, 0))
            if start is None or stop < start:
                continue
            gaps.extend((key, first, last) for first, last in seen.gaps(start, stop))
        return gaps

    def _due(self, key: Key, first: int, last: int, now: float) -> bool:
        """Track each missing seq; a range is due once it passed the grace time and was not
        asked for within retry_s. Caller holds the lock."""
        due = False
        for seq in range(first, last + 1):
            state = self.gaps.get((key, seq))
            if state is None:
                self.gaps[(key, seq)] = GapState(now)
                continue
            if now - state.first_seen_mono < self.grace_s:
                continue
            if state.last_request_mono is None:
                self.summary.gap_seqs_seen += 1
            if state.last_request_mono is None or now - state.last_request_mono >= self.retry_s:
                state.last_request_mono = now
                due = True
        return due

    def _command(self, verb: str, body: dict[str, Any], site: str | None = None) -> None:
        base = f"{self.cfg.topic_prefix}/{site or self.site}/cmd"
        props = None
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{base}/{verb}/reply"
        body = {"id": uuid.uuid4().hex[:12], **body}
        self.client.publish(f"{base}/{verb}", dumps(body), qos=1, properties=props)
        if verb == "republish":
            with self.lock:
                self.summary.republish_requests += 1

    def progress(self) -> tuple[int, int]:
        """(seqs received, seqs expected): the expected run from each stream's first seq (1 with
        from_first) to the newer of its last seq and the gateway's head; a caught-up
        subscriber shows them equal."""
        with self.lock:
            received = expected = 0
            for key in set(self.seen) | set(self.heads):
                seen = self.seen.get(key) or SeqSet()
                start = 1 if self.from_first else (seen.first or 1)
                stop = max(seen.last or 0, self.heads.get(key, 0))
                received += len(seen)
                expected += max(stop - start + 1, 0)
            return received, expected

    def synced(self) -> bool:
        """The last ping showed an empty outbox and nothing is missing up to the heads (the
        summary's open-gap count is refreshed with it, so the two never disagree)."""
        with self.lock:
            if not self.outbox_empty or not self.heads:
                return False
            if any(head > 0 and key not in self.seen for key, head in self.heads.items()):
                return False
            gaps = self._open_gaps()
            self.summary.gap_seqs_open = sum(last - first + 1 for _, first, last in gaps)
            return not gaps
