"""tokenrelay: a streaming gateway between apps and OpenAI-compatible LLM upstreams."""

from tokenrelay.app import create_app
from tokenrelay.config import ModelConfig, Settings, load_settings

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Settings", "__version__", "create_app", "load_settings"]
