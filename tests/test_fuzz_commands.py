"""Property-based fuzzing of the MQTT command handler, over a real SQLite store.

Whatever arrives on ``cmd/<verb>`` (any bytes, any JSON, near-valid commands with numbers of any
size, any MQTT 5 response topic), the handler returns a reply: ``ok`` with a result or an error
that validation chose. An ``internal error`` reply means an exception escaped validation: a bug.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_sync_commands_hostile import CMD, Gateway

from bess_edge.sync.commands import MAX_COMMAND_BYTES, VERBS

pytestmark = pytest.mark.fuzz

VERB = st.sampled_from(sorted(VERBS)) | st.text(max_size=20)
FIELDS = ["id", "alert_id", "actor", "note", "device", "stream", "seq_first", "seq_last",
          "since_ms", "until_ms"]  # fmt: skip
# Integers around every bound that matters: 0, 1, 2**31, 2**63 (SQLite), 2**64, and far beyond.
INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**20, 10**30]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["rack-1", "telemetry", "alerts", "nope"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
NEAR_VALID = st.dictionaries(st.sampled_from(FIELDS), st.one_of(SCALARS, JSON), max_size=6)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("fuzz-commands"))
    yield gw
    gw.close()


def check_reply(topic: str, reply: dict[str, Any], verb: str) -> None:
    assert isinstance(reply["ok"], bool)
    if reply["ok"]:
        assert isinstance(reply["result"], dict)
    else:
        assert isinstance(reply["error"], str) and reply["error"]
        assert "internal error" not in reply["error"], reply["error"]
    assert topic.startswith(CMD) and topic.endswith("/reply")
    json.dumps(reply, allow_nan=False)  # the reply itself is always valid JSON


@given(verb=VERB, payload=st.binary(max_size=MAX_COMMAND_BYTES + 16))
def test_any_bytes_get_a_reply(gateway: Gateway, verb: str, payload: bytes):
    check_reply(*gateway.answer(verb, payload), verb)


@given(verb=VERB, command=NEAR_VALID)
def test_near_valid_commands_are_executed_or_refused_by_validation(
    gateway: Gateway, verb: str, command: dict[str, Any]
):
    payload = json.dumps(command).encode()
    check_reply(*gateway.answer(verb, payload), verb)


@given(
    verb=st.sampled_from(sorted(VERBS)),
    depth=st.integers(1, MAX_COMMAND_BYTES // 2),
    opener=st.sampled_from(["[", '{"a":', '{"id": "x", "note": [']),
)
def test_nesting_of_any_depth_gets_a_reply(gateway: Gateway, verb: str, depth: int, opener: str):
    payload = (opener * depth).encode()[:MAX_COMMAND_BYTES]
    check_reply(*gateway.answer(verb, payload), verb)


@given(
    response_topic=st.text(max_size=80)
    | st.sampled_from([f"{CMD}x/reply", "bess/s1/rack-1/alerts"])
)
def test_replies_never_leave_the_reply_tree(gateway: Gateway, response_topic: str):
    topic, reply = gateway.answer("ping", b"{}", response_topic=response_topic)
    assert topic.startswith(CMD) and topic.endswith("/reply")
    assert reply["ok"] == (topic == response_topic)
