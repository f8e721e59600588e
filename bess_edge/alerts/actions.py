"""Optional local actions of a rule: run a command and/or write a Modbus coil or register.

A convenience for a siren or a text message, NOT a safety function: it runs after the alert
was decided, at most once per transition, may fail, and nothing retries it. Protection belongs
in the BMS and in hard-wired interlocks (docs/alerts.md).
"""

from __future__ import annotations

import logging
import subprocess
import threading

from bess_edge.config import ModbusWrite, RuleAction
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
    return [arg.format(**fields) for arg in action.command or ()]


def run_action(action: RuleAction, t: AlertTransition) -> None:
    """Start the action on its own thread when ``t`` is one of the transitions it is for."""
    if t.transition not in action.on:
        return
    argv = None
    if action.command is not None:
        try:
            argv = action_argv(action, t)
        except (KeyError, IndexError, ValueError) as exc:
            log.error("alert action not run", extra={"rule": t.rule, "error": f"placeholder {exc}"})
            return
    threading.Thread(
        target=_run, args=(action, argv, t), name=f"action:{t.rule}", daemon=True
    ).start()


def _run(action: RuleAction, argv: list[str] | None, t: AlertTransition) -> None:
    where = {"rule": t.rule, "device": t.device, "alert_id": t.alert_id}
    if action.modbus is not None:
        _write_modbus(action.modbus, action.timeout_s, where)
    if argv is not None:
        _run_command(argv, action.timeout_s, {**where, "argv": argv})


def _write_modbus(target: ModbusWrite, timeout_s: float, where: dict[str, object]) -> None:
    from pymodbus.client import ModbusTcpClient  # only sites with a Modbus action load it

    what = {**where, "modbus": f"{target.host}:{target.port}/{target.unit}", "value": target.value}
    client = ModbusTcpClient(target.host, port=target.port, timeout=timeout_s, retries=1)
    try:
        if not client.connect():
            log.error("alert action: Modbus device not reachable", extra=what)
            return
        if target.coil is not None:
            reply = client.write_coil(target.coil, bool(target.value), device_id=target.unit)
        else:
            address = target.holding_register or 0  # set: the config allows coil xor register
            reply = client.write_register(address, target.value, device_id=target.unit)
        if reply.isError():
            log.error("alert action: Modbus write refused", extra={**what, "reply": str(reply)})
        else:
            log.info("alert action wrote Modbus", extra=what)
    except Exception as exc:  # an action must never take the daemon down
        log.error("alert action: Modbus write failed", extra={**what, "error": repr(exc)})
    finally:
        client.close()


def _run_command(argv: list[str], timeout_s: float, where: dict[str, object]) -> None:
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
