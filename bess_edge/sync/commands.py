"""Inbound commands on ``<prefix>/<site>/cmd/<verb>``: validated, executed, answered.

A command is a small JSON object; anything else (not JSON, wrong types, unknown keys or verbs,
more than :data:`MAX_COMMAND_BYTES`) is answered with ``ok: false`` and an error, and never
executed. Validation is pydantic with ``extra="forbid"`` and strict types, so ``"alert_id": "7"``
is refused rather than guessed at; numbers are bounded to what SQLite and a clock can hold, so a
seq of 10**30 is refused here instead of overflowing in a query. Trust comes from the broker:
only an authenticated connection should be allowed to publish to ``cmd/#`` (see docs/mqtt.md,
broker ACLs). Even so, an MQTT 5 ``response_topic`` must stay under the command tree (or the
configured ``mqtt.reply_topic_prefix``): a command must not make the gateway publish on its own
data topics.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_COMMAND_BYTES = 4096
MAX_REPUBLISH_ROWS = 200_000  # one command re-queues at most this many rows (a day at 1 Hz: 86k)

# SQLite integers are signed 64-bit: a larger number raises OverflowError inside the query.
SQLITE_INT_MAX = 2**63 - 1
# 9999-12-31T23:59:59.999Z, the last instant a calendar date (and Python's datetime) can show.
MAX_TIME_MS = 253_402_300_799_999

Text = Annotated[str, Field(max_length=256)]
DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
Stream = Literal["telemetry", "diagnostics", "alerts"]
Seq = Annotated[int, Field(ge=1, le=SQLITE_INT_MAX)]
TimeMs = Annotated[int, Field(ge=0, le=MAX_TIME_MS)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: Text | None = None  # echoed in the reply, for correlation over MQTT 3.1.1


class Ping(Command):
    pass


class Ack(Command):
    alert_id: Annotated[int, Field(ge=1, le=SQLITE_INT_MAX)]
    actor: Text = "mqtt"
    note: Text | None = None


class Republish(Command):
    """Re-send a device's stream(s) by seq range (inclusive) and/or time range [since, until)."""

    device: DeviceId
    stream: Stream | None = None  # None: every stream of the device (needs a time range)
    seq_first: Seq | None = None
    seq_last: Seq | None = None
    since_ms: TimeMs | None = None
    until_ms: TimeMs | None = None

    @model_validator(mode="after")
    def _a_range(self) -> Republish:
        by_seq = self.seq_first is not None or self.seq_last is not None
        by_time = self.since_ms is not None or self.until_ms is not None
        if not (by_seq or by_time):
            raise ValueError("give seq_first/seq_last or since_ms/until_ms")
        if by_seq and self.stream is None:
            raise ValueError("a seq range needs a stream (seqs are per stream)")
        first, last, since, until = self.seq_first, self.seq_last, self.since_ms, self.until_ms
        if first is not None and last is not None and last < first:
            raise ValueError("seq_last must be >= seq_first")
        if since is not None and until is not None and until <= since:
            raise ValueError("until_ms must be > since_ms")
        return self


VERBS: dict[str, type[Command]] = {"ping": Ping, "ack": Ack, "republish": Republish}


class CommandError(Exception):
    """A command that is refused; the message goes into the error reply."""


def parse(verb: str, payload: bytes) -> Command:
    """The validated command, or CommandError saying what is wrong with it."""
    model = VERBS.get(verb)
    if model is None:
        raise CommandError(f"unknown verb {verb[:64]!r}; known: {', '.join(sorted(VERBS))}")
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        raw = json.loads(payload) if payload.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"not JSON: {exc}") from None
    except RecursionError:  # `[` x 1500 fits in 3 KB and exhausts the decoder's stack
        raise CommandError("not JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise CommandError("payload must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise CommandError(problems) from None


def check_response_topic(topic: str, allowed_prefixes: tuple[str, ...]) -> None:
    """Refuse an MQTT 5 response topic outside the reply topics (CommandError).

    ``allowed_prefixes`` end with ``/``: ``<prefix>/<site>/cmd/`` (where a reply topic must end
    with ``/reply``, which the gateway's own command subscription ignores) and, if configured,
    ``mqtt.reply_topic_prefix`` + ``/``.
    """
    command_tree, *others = allowed_prefixes
    shown = topic[:128]
    if any(c in topic for c in "+#\0") or len(topic.encode()) > 65535:
        raise CommandError(f"response_topic {shown!r} is not a valid topic name")
    if topic.startswith(command_tree) and topic.endswith("/reply"):
        return
    if any(topic.startswith(prefix) and len(topic) > len(prefix) for prefix in others):
        return
    allowed = [f"{command_tree}.../reply", *(f"{p}..." for p in others)]
    raise CommandError(
        f"response_topic {shown!r} refused: replies go only under {' or '.join(allowed)}"
    )


def request_id(payload: bytes) -> str | None:
    """The ``id`` of a command even when the rest is invalid, so the error can be correlated.

    An oversized payload is not parsed: the id is looked for near its start.
    """
    if len(payload) <= MAX_COMMAND_BYTES:
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raw = None
        if isinstance(raw, dict):
            value = raw.get("id")
            return value[:256] if isinstance(value, str) else None
    match = _ID_NEAR_START.search(payload[:MAX_COMMAND_BYTES])
    return match[1].decode(errors="replace") if match else None


_ID_NEAR_START = re.compile(rb'"id"\s*:\s*"([^"\\]{0,256})"')
