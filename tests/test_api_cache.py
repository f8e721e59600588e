"""SharedAnswers: concurrent identical queries computed once, answers expire after ttl_s."""

from __future__ import annotations

import threading
import time

import pytest

from bess_edge.api.cache import SharedAnswers


def test_ten_concurrent_identical_queries_are_computed_once():
    answers, calls = SharedAnswers(ttl_s=5.0), []

    def slow() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "series"

    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(answers.get("k", slow)))
               for _ in range(10)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["series"] * 10 and len(calls) == 1


def test_answers_expire_and_other_keys_are_computed_apart():
    answers, calls = SharedAnswers(ttl_s=0.05), []
    answers.get("a", lambda: calls.append("a"))
    answers.get("a", lambda: calls.append("a"))
    answers.get("b", lambda: calls.append("b"))
    time.sleep(0.06)
    answers.get("a", lambda: calls.append("a"))
    assert calls == ["a", "b", "a"]


def test_a_failing_computation_is_not_cached_and_does_not_block_the_next():
    answers = SharedAnswers(ttl_s=5.0)

    def boom() -> None:
        raise RuntimeError("database is locked")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            answers.get("k", boom)
    assert answers.get("k", lambda: 7) == 7
