"""The models a gateway offers when its configuration names none, and ``load_settings``.

With no ``[models]`` table: OpenAI's models when ``OPENAI_API_KEY`` is set (at
``OPENAI_BASE_URL`` if that is set too, as the OpenAI SDKs do: Azure, a proxy, vLLM), else the
local model when this machine can run it; always the simulated one. This is the only module
that looks at the machine to decide what to serve; ``config`` stays pure data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tokenrelay.config import (
    BUILTIN_LOCAL_URL,
    BUILTIN_SIM_URL,
    MODEL_TOKENIZER,
    LocalModelSettings,
    ModelConfig,
    Settings,
    read_settings,
)
from tokenrelay.local.discovery import bundled_model_path, unavailable_reason

LOCAL_MODEL_PATH_ENV = "TOKENRELAY_LOCAL_MODEL_PATH"
OPENAI_BASE_URL = "https://api.openai.com/v1"
# Offered automatically when OPENAI_API_KEY is set and no model table is configured.
OPENAI_PRESET_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the file, the environment and ``overrides``, with the built-in models
    filled in when none are configured."""
    settings = read_settings(config_file, **overrides)
    if not settings.models:
        settings.use_models(default_models(settings.local_model))
    return settings


def local_model_path(local: LocalModelSettings) -> Path | None:
    """The configured file, else ``$TOKENRELAY_LOCAL_MODEL_PATH``, else the bundled one."""
    if local.path is not None:
        return local.path
    if os.environ.get(LOCAL_MODEL_PATH_ENV):
        return Path(os.environ[LOCAL_MODEL_PATH_ENV])
    return bundled_model_path()


def local_model_config(local: LocalModelSettings, path: Path) -> ModelConfig:
    """The model table entry of the local model."""
    return ModelConfig(
        base_url=BUILTIN_LOCAL_URL,
        upstream_model=local.name,
        tokenizer_encoding=MODEL_TOKENIZER,
        # Time in the queue counts too: one answer at a time, so a wait can be long.
        first_token_timeout_seconds=600.0,
        description=f"{path.name}, running on this machine's CPU (llama.cpp)",
    )


def default_models(local: LocalModelSettings | None = None) -> dict[str, ModelConfig]:
    """Models available with no model table: OpenAI's if a key is set, else the local model
    (when installed) first, and always the simulator."""
    models: dict[str, ModelConfig] = {}
    local = local or LocalModelSettings()
    has_openai_key = bool(os.environ.get("OPENAI_API_KEY"))
    if local.enabled if local.enabled is not None else not has_openai_key:
        path = local_model_path(local)
        reason = unavailable_reason(path)
        if reason is None and path is not None:
            models[local.name] = local_model_config(local, path)
        elif local.enabled:
            raise ValueError(f"local_model.enabled is true but {reason}")
    if has_openai_key:
        base_url = os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        for name in OPENAI_PRESET_MODELS:
            models[name] = ModelConfig(
                base_url=base_url,
                api_key_env="OPENAI_API_KEY",
                tokenizer_encoding="o200k_base",
                description="OpenAI" if base_url == OPENAI_BASE_URL else f"OpenAI-compatible at {base_url}",
            )
    models["tokenrelay-sim"] = ModelConfig(
        base_url=BUILTIN_SIM_URL,
        # Paced like a real model so the demo shows tokens arriving.
        upstream_model="sim?tps=40",
        description="Simulated model built into tokenrelay (no API key, no real model)",
    )
    return models
