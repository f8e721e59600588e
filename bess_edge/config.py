"""The one config file: TOML, validated by pydantic-settings, overridable from the environment.

``load_config(path)`` returns :class:`Settings` or raises :class:`ConfigError`, whose lines each
name the file, the key path (``devices[1].poll_interval_s``) and the reason, so an integrator
can fix a site's file without reading Python. Environment variables
``BESS_EDGE__SECTION__KEY`` (e.g. ``BESS_EDGE__MQTT__PASSWORD``) override the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bess_edge.chemistry import Chemistry, get_chemistry, load_ocv_table
from bess_edge.config_reasons import key_path as _key_path  # noqa: F401  (the API's rule file and
from bess_edge.config_reasons import reason as _reason  # noqa: F401  the cloud's config use them)
from bess_edge.config_rules import BUILTIN_ALERTS as BUILTIN_ALERTS  # the rules, re-exported
from bess_edge.config_rules import MESSAGE_FIELDS as MESSAGE_FIELDS
from bess_edge.config_rules import ModbusWrite as ModbusWrite
from bess_edge.config_rules import RuleAction as RuleAction
from bess_edge.config_rules import ThresholdRule as ThresholdRule
from bess_edge.config_types import FsPath, Host, Section, TopicId

DEFAULT_CONFIG_PATH = Path("/etc/bess-edge/bess-edge.toml")

# Topic levels and store names that a device id would collide with.
RESERVED_DEVICE_IDS = {
    "cmd": "the MQTT command topic <prefix>/<site>/cmd/...",
    "state": "the MQTT topic <prefix>/<site>/state",
    "_site": "the device name of site-wide alerts",
}


class SiteConfig(Section):
    id: TopicId
    name: str = ""


class StorageConfig(Section):
    path: FsPath = Path("/var/lib/bess-edge/bess-edge.db")
    max_size_mb: float = Field(1024.0, gt=0)
    # Published data is kept this long so a subscriber can ask for a gap to be re-sent.
    retention_days: float = Field(30.0, gt=0)
    # "full" survives power loss (fsync per commit); "normal" only survives a crash of the process.
    synchronous: Literal["normal", "full"] = "full"


class TlsConfig(Section):
    enabled: bool = False
    ca_file: FsPath | None = None
    cert_file: FsPath | None = None
    key_file: FsPath | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (mutual TLS)")
        return self


class MqttConfig(Section):
    enabled: bool = False
    host: Host = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None  # default: "bess-edge-<site id>"
    topic_prefix: str = Field("bess", pattern=r"^[^#+]+$")
    # Where an MQTT 5 command's response_topic may also point (besides <prefix>/<site>/cmd/
    # .../reply), e.g. a cloud tool's own reply tree; never the gateway's data topics.
    reply_topic_prefix: str | None = Field(None, pattern=r"^[^#+]+$")
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: float = Field(30.0, gt=0)
    username: str | None = None
    password: SecretStr | None = None
    password_file: FsPath | None = None
    tls: TlsConfig = TlsConfig()
    encoding: Literal["json", "compact"] = "json"
    max_inflight: int = Field(32, ge=1, le=65535)
    max_message_bytes: int = Field(256 * 1024, ge=1024)
    reconnect_max_s: float = Field(60.0, gt=0)
    # Cap on the bytes/s of backlog (telemetry, diagnostics) catch-up on a thin or metered
    # uplink; alerts are never limited. Unset: as fast as the broker acknowledges.
    backlog_max_bytes_s: float | None = Field(None, gt=0)
    # Live telemetry and diagnostics wait up to this long for more polls, so that one message
    # carries several (a message per poll costs more CPU than the poll); 0 sends each at once.
    # Alerts and command replies never wait.
    linger_s: float = Field(1.0, ge=0, le=60)

    @model_validator(mode="after")
    def _replies_apart_from_data(self) -> MqttConfig:
        if self.reply_topic_prefix is not None:
            replies = self.reply_topic_prefix.rstrip("/") + "/"
            data = self.topic_prefix.rstrip("/") + "/"
            if replies.startswith(data) or data.startswith(replies):
                raise ValueError(
                    f"reply_topic_prefix {self.reply_topic_prefix!r} overlaps the data topics "
                    f"under {data!r}: replies need a tree of their own"
                )
        return self


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON
    # Per-module levels, e.g. {"bess_edge.sync" = "debug"}.
    modules: dict[str, Literal["debug", "info", "warning", "error"]] = {}


class HttpConfig(Section):
    enabled: bool = False
    host: Host = "127.0.0.1"
    port: int = Field(9464, ge=1, le=65535)


class ApiConfig(Section):
    """``bess-edge api``: the REST API and dashboard, a process of its own (docs/api.md)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    tls_cert_file: FsPath | None = None  # HTTPS when both are given
    tls_key_file: FsPath | None = None
    cors_origins: list[str] = []  # browser origins allowed to call the API from other pages
    # Hashed API keys; default api-keys.json beside storage.path (docs/api.md says why a file).
    keys_file: FsPath | None = None
    # Rules created or edited through the API; default api-thresholds.toml beside storage.path.
    # Read after this file's own [[thresholds]] and before include_thresholds.
    thresholds_file: FsPath | None = None
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        return self

    def keys_path(self, storage: StorageConfig) -> Path:
        return self.keys_file or storage.path.with_name("api-keys.json")

    def thresholds_path(self, storage: StorageConfig) -> Path:
        return api_thresholds_path(self.thresholds_file, storage.path)


def api_thresholds_path(thresholds_file: Path | str | None, storage_path: Path | str) -> Path:
    """Absolute, because include_thresholds resolves relative names beside the config file."""
    path = Path(thresholds_file or Path(storage_path).with_name("api-thresholds.toml"))
    return path.absolute()


class DeviceConfig(Section):
    id: TopicId
    driver: str
    enabled: bool = True
    poll_interval_s: float = Field(1.0, gt=0)
    # A Diagnosis is stored and published at most once per this many seconds (and whenever an
    # alert changes), its per-cell and thermal views refreshed as often; every poll is still
    # diagnosed and alerted on (Diagnostician.update's cell_views). 0: every poll.
    diagnosis_interval_s: float = Field(1.0, ge=0, le=3600)
    timeout_s: float = Field(2.0, gt=0)
    max_backoff_s: float = Field(60.0, gt=0)
    failures_before_lost: int = Field(3, ge=1)
    chemistry: str = "lfp"
    capacity_ah: float = Field(100.0, gt=0)  # nominal capacity of the series string
    # Cells in series: required for a device that reports no cell voltages (check-config says
    # so where the map or mapping shows it), else learned from the cell array.
    series_cells: int | None = Field(None, ge=1, le=20_000)
    chemistry_overrides: dict[str, Any] = {}
    # A per-cell OCV table (CSV soc_pct,ocv_v: `bess-edge commission` writes one, or a
    # datasheet's); it wins over the preset's and over an ocv_v override. A relative path in
    # the file is taken from the config file's folder (load_config makes it absolute).
    ocv_table: FsPath | None = None
    options: dict[str, Any] = {}
    _parsed_options: BaseModel | None = PrivateAttr(default=None)

    @field_validator("chemistry")
    @classmethod
    def _known_chemistry(cls, value: str) -> str:
        get_chemistry(value)
        return value.lower()

    @property
    def parsed_options(self) -> BaseModel:
        """The ``options`` table validated by the driver's own model (set by load_config)."""
        if self._parsed_options is None:
            raise RuntimeError(f"options of device {self.id!r} were not validated")
        return self._parsed_options

    def chemistry_preset(self) -> Chemistry:
        chemistry = get_chemistry(self.chemistry, self.chemistry_overrides)
        if self.ocv_table is None:
            return chemistry
        return chemistry.with_ocv_table(*load_ocv_table(self.ocv_table), source="file")


class Settings(BaseSettings):
    """The whole config file."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix="BESS_EDGE__",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    site: SiteConfig
    storage: StorageConfig = StorageConfig()
    mqtt: MqttConfig = MqttConfig()
    logging: LoggingConfig = LoggingConfig()
    http: HttpConfig = HttpConfig()
    api: ApiConfig = ApiConfig()
    devices: list[DeviceConfig] = Field(min_length=1)
    # Rule files added after this file's own [[thresholds]] (a rule of the same name here wins);
    # a name is looked up beside this file, then among the shipped config/ files.
    include_thresholds: list[str] = []
    thresholds: list[ThresholdRule] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    def device(self, device_id: str) -> DeviceConfig:
        for device in self.devices:
            if device.id == device_id:
                return device
        raise KeyError(device_id)

    def summary(self) -> str:
        """A few human lines: what this file will make the daemon do."""
        lines = [
            f"site {self.site.id}" + (f" ({self.site.name})" if self.site.name else ""),
            f"storage {self.storage.path} (cap {self.storage.max_size_mb:g} MB, "
            f"keep {self.storage.retention_days:g} days)",
            (
                f"mqtt {self.mqtt.host}:{self.mqtt.port} prefix {self.mqtt.topic_prefix!r}"
                + (" tls" if self.mqtt.tls.enabled else "")
                if self.mqtt.enabled
                else "mqtt disabled (data is buffered locally)"
            ),
        ]
        for d in self.devices:
            state = "" if d.enabled else " [disabled]"
            kept = d.diagnosis_interval_s > d.poll_interval_s
            diagnosis = f"a diagnosis every {d.diagnosis_interval_s:g} s, " if kept else ""
            lines.append(
                f"device {d.id}: driver {d.driver}, every {d.poll_interval_s:g} s, {diagnosis}"
                f"{d.chemistry} {d.capacity_ah:g} Ah{state}"
            )
        lines.append(f"{len(self.thresholds)} threshold rule(s)")
        return "\n".join(lines)


class Problem(NamedTuple):
    """One reason a config cannot be used, and where: the key path and, when it is not the
    config file itself, the source (an included file, an environment variable)."""

    key: str
    reason: str
    source: str = ""


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` holds every :class:`Problem` found."""

    def __init__(self, path: Path | str, problems: Sequence[tuple[str, str] | Problem]) -> None:
        self.path = Path(path)
        self.problems = [Problem(*p) for p in problems]
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem: ``SOURCE: KEY.PATH: reason``, the source being the file."""
        out = []
        for key, reason, source in self.problems:
            where = source or str(self.path)
            out.append(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")
        return out


def load_config(path: Path | str, *, runnable: bool = False) -> Settings:
    """Read, validate and return the config at ``path``, or raise ConfigError with every
    problem found in one pass. ``runnable`` also checks that this machine can run it (files
    named by the config exist and are readable, the storage path is usable): ``run`` and
    ``check-config`` ask for it; ``status`` as an unprivileged user does not."""
    # Imported here: the checker imports the drivers, whose modules import this one.
    from bess_edge.config_check import check_config

    path = Path(path)
    return check_config(path, read_toml(path), runnable=runnable)


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML table, or ConfigError with the line and column of a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(path, [("", "is a directory, not a config file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [("", f"cannot read: {exc}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [("", f"invalid TOML: {exc}")]) from None
