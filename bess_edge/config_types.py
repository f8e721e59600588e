"""The value types every config table shares: ids, hosts, paths, severities, and Section."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Site and device ids become MQTT topic levels and file names: keep them to a safe alphabet.
TopicId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
Severity = Literal["info", "warning", "critical"]
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def _host(value: str) -> str:
    """An IP address or a DNS name (RFC 1123), e.g. not ``127.0.0.1:9464`` or ``http://x``."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a host name or an IP address"
                + (" (the port goes in 'port')" if ":" in value and "." in value else "")
            ) from None
    return value


Host = Annotated[str, AfterValidator(_host)]


def _no_nul(value: Path) -> Path:
    if "\0" in str(value):
        raise ValueError("a path may not contain a NUL character")
    return value


# A file system path: the OS refuses a NUL in one (ValueError deep inside open, not a message).
FsPath = Annotated[Path, AfterValidator(_no_nul)]


class Section(BaseModel):
    """A config table: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid")
