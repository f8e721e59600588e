"""The driver interface and the registry that finds a driver by its config name.

Modelled on python-can's ``BusABC``: a driver implements ``open``, ``read`` and ``close`` and
nothing else. Timing, timeouts, retries, back-off and the ``comms_lost`` state live once, in the
daemon's poll task (:mod:`bess_edge.poller`), so a driver just raises when a poll fails.

A driver must never block the event loop: blocking libraries go through
``asyncio.to_thread`` or an async client.
"""

from __future__ import annotations

import abc
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from bess_edge.model import Reading

if TYPE_CHECKING:
    from bess_edge.config import DeviceConfig


class DriverError(Exception):
    """A poll failed in a way the driver understood (exception response, bus off, ...)."""


class NoOptions(BaseModel):
    """Options of a driver that takes none; unknown keys are still an error."""

    model_config = ConfigDict(extra="forbid")


class Driver(abc.ABC):
    """One connection to one device.

    ``Options`` is the pydantic model of the device's ``[devices.options]`` table; the config
    loader validates it, so a typo there is reported with its key path before the daemon starts.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, device: DeviceConfig, options: BaseModel) -> None:
        self.device = device
        self.options = options

    @property
    def device_id(self) -> str:
        return self.device.id

    async def open(self) -> None:  # noqa: B027 - optional hook, most drivers need it
        """Connect to the device. Called before the first read and again after a failure."""

    @abc.abstractmethod
    async def read(self) -> Reading:
        """Poll the device once and return a Reading; raise on failure."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection. Must not raise, and must be safe to call twice."""


# Built-in drivers by config name, imported only when a device uses them so that a site with
# only Modbus devices never imports python-can. Third-party drivers register through the
# ``bess_edge.drivers`` entry-point group.
_BUILTIN: dict[str, str] = {
    "sim": "bess_edge.drivers.sim:SimDriver",
    "modbus": "bess_edge.drivers.modbus:ModbusDriver",
    "sunspec": "bess_edge.drivers.sunspec:SunSpecDriver",
    "can": "bess_edge.drivers.can:CanDriver",
    "replay": "bess_edge.drivers.replay:ReplayDriver",
}


def driver_names() -> list[str]:
    """Every driver name the config may use."""
    third_party = {ep.name for ep in entry_points(group="bess_edge.drivers")}
    return sorted(set(_BUILTIN) | third_party)


def driver_class(name: str) -> type[Driver]:
    """The driver class registered under ``name``; ValueError names the known ones."""
    target = _BUILTIN.get(name)
    if target is None:
        matches = entry_points(group="bess_edge.drivers", name=name)
        if not matches:
            raise ValueError(f"unknown driver {name!r}; known: {', '.join(driver_names())}")
        target = next(iter(matches)).value
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"driver {name!r} is not available: {exc}") from exc
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise ValueError(f"driver {name!r} ({target}) is not a bess_edge Driver")
    return cls
