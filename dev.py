#!/usr/bin/env python3
"""Developer entry point: needs only Python 3.11+. Creates .venv from requirements.lock on first use.

python3 dev.py serve [args]   start the gateway on 127.0.0.1:8000 (tokenrelay serve)
python3 dev.py test [args]    run the test suite (pytest)
python3 dev.py lint           ruff and mypy --strict
python3 dev.py lock           re-pin requirements.lock from pyproject.toml
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".installed-lock"


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def ensure_venv() -> None:
    """Create or refresh .venv so it matches requirements.lock and pyproject.toml exactly."""
    digest = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = (BIN / "python", "-m", "pip", "--disable-pip-version-check", "-q")
    _run(*pip, "install", "-r", LOCK)
    _run(*pip, "install", "--no-deps", "-e", ".")
    STAMP.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "lint", "lock"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if sys.version_info < (3, 11):
        print("tokenrelay needs Python 3.11 or newer", file=sys.stderr)
        return 2
    ensure_venv()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if command == "serve":
        args = [str(BIN / "tokenrelay"), "serve", *rest]
    elif command == "test":
        args = [str(BIN / "python"), "-m", "pytest", *rest]
    elif command == "lint":
        paths = [p for p in ("src", "tests", "bench", "dev.py") if (ROOT / p).exists()]
        for args in (
            [str(BIN / "ruff"), "check", *paths],
            [str(BIN / "ruff"), "format", "--check", *paths],
            [str(BIN / "mypy")],
        ):
            code = subprocess.run(args, cwd=ROOT, env=env).returncode
            if code:
                return code
        return 0
    else:
        args = [
            str(BIN / "pip-compile"),
            "-q",
            "--strip-extras",
            "--extra",
            "dev",
            "-o",
            str(LOCK),
            "pyproject.toml",
        ]
    return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
