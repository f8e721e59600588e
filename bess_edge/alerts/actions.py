"""Optional local actions of a rule: run a command on an alert transition.

A convenience for a siren or a text message, NOT a safety function: it runs after the alert
was decided, at most once per transition, may fail, and nothing retries it. Protection belongs
in the BMS and in hard-wired interlocks (docs/alerts.md).
"""

from __future__ import annotations

import logging
import subprocess
import threading

from bess_edge.config import RuleAction
from bess_edge.store import AlertTransition

log = logging.getLogger(__name__)


def action_argv(action: RuleAction, t: AlertTransition) -> list[str]:
    """The command with ``{device} {rule} {cell} {alert_id} {transition} {severity} {value}``
    filled in per argument: no shell ever parses it, so a value cannot inject a command."""
    fields = {
        "device": t.device,
        "rule": t.rule,
        "cell": "-" if t.cell is None else t.cell,
        "alert_id": t.alert_id,
        "transition": t.transition,
        "severity": t.severity,
        "value": "" if t.value is None else f"{t.value:.6g}",
        "message": t.message,
    }
    return [arg.format(**fields) for arg in action.command]


def run_action(action: RuleAction, t: AlertTransition) -> None:
    """Start the command on its own thread when ``t`` is one of the transitions it is for."""
    if t.transition not in action.on:
        return
    try:
        argv = action_argv(action, t)
    except (KeyError, IndexError, ValueError) as exc:
        log.error("alert action not run", extra={"rule": t.rule, "error": f"placeholder {exc}"})
        return
    threading.Thread(
        target=_run, args=(argv, action.timeout_s, t), name=f"action:{t.rule}", daemon=True
    ).start()


def _run(argv: list[str], timeout_s: float, t: AlertTransition) -> None:
    where = {"rule": t.rule, "device": t.device, "alert_id": t.alert_id, "argv": argv}
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        log.error("alert action timed out and was killed", extra={**where, "timeout_s": timeout_s})
        return
    except OSError as exc:
        log.error("alert action could not start", extra={**where, "error": str(exc)})
        return
    if done.returncode != 0:
        log.error(
            "alert action failed",
            extra={
                **where,
                "returncode": done.returncode,
                "stderr": done.stderr.decode(errors="replace")[-500:],
            },
        )
    else:
        log.info("alert action ran", extra=where)
