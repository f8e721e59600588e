"""``cloud.toml``: the ingest's config, a model of its own beside the gateway's ``Settings``.

Its ``[mqtt]`` table is the gateway's :class:`~bess_edge.config.MqttConfig` (broker, TLS,
credentials); ``[ingest]`` says where to write and how the workers share the work. Errors are
reported like the gateway's: file, key path, reason. ``BESS_EDGE__INGEST__DATABASE_URL`` and
the like override the file, so a password need not be written in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bess_edge.config import (
    ConfigError,
    HttpConfig,
    LoggingConfig,
    MqttConfig,
    Section,
    _key_path,
    _reason,
    read_toml,
)


class IngestConfig(Section):
    database_url: str = Field(min_length=1)  # libpq URL or key=value string
    group: str = Field("bess-ingest", pattern=r"^[^/#+]+$")  # the shared-subscription group
    prefix: str = Field("bess", pattern=r"^[^#+]+$")  # the gateways' mqtt.topic_prefix
    # A batch (one transaction) is committed when it holds this many messages or its oldest
    # message waited this long. mosquitto sends a subscriber at most max_inflight_messages
    # unacknowledged messages (20 by default): raise it, or batches stay that small.
    batch_max_messages: int = Field(500, ge=1)
    batch_max_delay_s: float = Field(0.05, gt=0)
    # Payloads above this are dead-lettered unread (gateways send <= mqtt.max_message_bytes).
    max_payload_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Sites are provisioned (`bess-edge ingest --add-site`); a message of any other site is
    # dead-lettered unless this is true.
    auto_register_sites: bool = False
    # Streams are expected complete from seq 1 (the gateway keeps retention_days of history and
    # re-publishes it on request); false: from the first seq this database saw.
    from_first: bool = True
    # A seq more than this above the newest one known for its stream is refused (dead letter):
    # a corrupt or forged seq would otherwise open a gap of billions of items.
    max_seq_ahead: int = Field(1_000_000, ge=1)
    # Gap repair: a missing range is asked for (`cmd/republish`) once it is older than grace_s,
    # again after retry_s without a reply; at most one request in flight per stream and
    # max_requests_per_s over the fleet. Heads are learnt by pinging each site every ping_s.
    grace_s: float = Field(5.0, ge=0)
    retry_s: float = Field(30.0, gt=0)
    ping_s: float = Field(10.0, gt=0)
    max_requests_per_s: float = Field(20.0, gt=0)
    tick_s: float = Field(1.0, gt=0)
    # Daily partitions of telemetry and battery_diagnostics older than this are dropped.
    retention_days: int = Field(90, ge=1)


class CloudSettings(BaseSettings):
    """The whole ``cloud.toml``."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="BESS_EDGE__", env_nested_delimiter="__", case_sensitive=False
    )

    mqtt: MqttConfig = MqttConfig(enabled=True)
    ingest: IngestConfig
    logging: LoggingConfig = LoggingConfig()
    http: HttpConfig = HttpConfig()  # Prometheus metrics on /metrics when enabled

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment wins over the file


def load_cloud_config(path: Path | str) -> CloudSettings:
    """Read and validate ``cloud.toml``, or raise ConfigError naming each key path."""
    path = Path(path)
    raw: dict[str, Any] = read_toml(path)
    try:
        return CloudSettings(**raw)
    except ValidationError as exc:
        raise ConfigError(path, [(_key_path(e["loc"]), _reason(e)) for e in exc.errors()]) from None


def load_cloud_or_exit(path: Path) -> CloudSettings:
    """The config, or every problem on stderr and exit code 2 (for the CLI)."""
    import sys

    try:
        return load_cloud_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        raise SystemExit(2) from None
