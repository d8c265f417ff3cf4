"""tokenrelay: a streaming gateway between apps and OpenAI-compatible LLM upstreams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenrelay.app import create_app
    from tokenrelay.catalog import load_settings
    from tokenrelay.config import ModelConfig, Settings

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Settings", "__version__", "create_app", "load_settings"]


def __getattr__(name: str) -> Any:
    # Lazy: `tokenrelay.client` and the CLI's `chat` must not pay for importing the server.
    if name == "create_app":
        from tokenrelay.app import create_app

        return create_app
    if name == "load_settings":
        from tokenrelay.catalog import load_settings

        return load_settings
    if name in ("ModelConfig", "Settings"):
        from tokenrelay import config

        return getattr(config, name)
    raise AttributeError(f"module 'tokenrelay' has no attribute {name!r}")
