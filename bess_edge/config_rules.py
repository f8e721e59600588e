"""Local alert rules as configured: ``[[thresholds]]`` tables and their optional actions.

Validated when the file is loaded, so a rule that cannot work (no direction, a clear level on the
wrong side, a message template that would fail when the alert fires) never reaches the engine.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from bess_edge.config_types import Section, Severity

# Alerts the engine raises by itself (docs/alerts.md); a [[thresholds]] rule may not reuse them.
BUILTIN_ALERTS = frozenset(
    {"comms_lost", "buffer_dropping", "thermal_runaway_precursor", "store_corrupt", "polls_skipped"}
)
# Placeholders a rule's message template may use, with sample values to check it at load time:
# one for a per-cell metric and one for a pack metric, as the engine fills them in.
MESSAGE_FIELDS: dict[str, Any] = {
    "device": "rack-1",
    "cell": 0,
    "where": " cell 0",
    "value": 1.0,
    "threshold": 1.0,
    "clear": 1.0,
    "metric": "m",
    "op": ">",
    "rule": "r",
    "severity": "warning",
}
_PACK_MESSAGE_FIELDS = {**MESSAGE_FIELDS, "cell": "-", "where": ""}


class ModbusWrite(Section):
    """One coil or holding register written over Modbus TCP (a siren, a contactor's input)."""

    host: str
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=247)
    coil: int | None = Field(None, ge=0, le=65535)
    holding_register: int | None = Field(None, ge=0, le=65535)
    value: int = Field(ge=0, le=65535)  # a coil takes 0 or 1

    @model_validator(mode="after")
    def _one_target(self) -> ModbusWrite:
        if (self.coil is None) == (self.holding_register is None):
            raise ValueError("give exactly one of 'coil' or 'holding_register'")
        if self.coil is not None and self.value not in (0, 1):
            raise ValueError(f"a coil takes 0 or 1 (got {self.value})")
        return self


class RuleAction(Section):
    """A local side effect of an alert transition: a convenience, NOT a safety function."""

    command: list[str] | None = Field(None, min_length=1)  # argv, never a shell string
    modbus: ModbusWrite | None = None
    on: list[Literal["raised", "acknowledged", "cleared"]] = ["raised"]
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _something_to_do(self) -> RuleAction:
        if self.command is None and self.modbus is None:
            raise ValueError("give 'command' and/or 'modbus'")
        return self


class ThresholdRule(Section):
    """One local alert rule (see docs/alerts.md): raise when ``metric`` crosses a level."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    metric: str
    above: float | None = None
    below: float | None = None
    clear: float | None = None  # hysteresis: the level the value must return past to clear
    for_s: float = Field(0.0, ge=0)  # debounce: the condition must hold this long
    clear_for_s: float = Field(0.0, ge=0)
    min_reraise_s: float = Field(60.0, ge=0)
    severity: Severity = "warning"
    devices: list[str] = ["*"]  # ids or shell-style globs
    message: str = "{device}{where}: {metric} {value:.4g} {op} {threshold:g}"
    action: RuleAction | None = None  # optional local action; not a safety function

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in BUILTIN_ALERTS:
            raise ValueError(f"{value!r} is a built-in alert name; choose another rule name")
        return value

    @field_validator("message")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            for fields in (MESSAGE_FIELDS, _PACK_MESSAGE_FIELDS):
                value.format(**fields)
        # Any error str.format can raise: "{device.x}" AttributeError, "{cell[0]}" TypeError.
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"bad message template ({exc!r}); placeholders: "
                + ", ".join("{" + k + "}" for k in MESSAGE_FIELDS)
            ) from None
        return value

    @model_validator(mode="after")
    def _one_direction(self) -> ThresholdRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        if self.clear is not None:
            if self.above is not None and self.clear > self.above:
                raise ValueError(f"clear ({self.clear}) must be <= above ({self.above})")
            if self.below is not None and self.clear < self.below:
                raise ValueError(f"clear ({self.clear}) must be >= below ({self.below})")
        return self

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]

    @property
    def clear_level(self) -> float:
        """The level past which the alert clears (the threshold itself without hysteresis)."""
        return self.clear if self.clear is not None else self.threshold
