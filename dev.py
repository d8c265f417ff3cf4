#!/usr/bin/env python3
"""Developer entry point: needs only Python 3.11+. Creates .venv from requirements.lock on first use.

python3 dev.py serve [args]   start the gateway on 127.0.0.1:8000 (tokenrelay serve)
python3 dev.py test [args]    run the test suite (pytest)
python3 dev.py lint           ruff, mypy --strict, and the JS client's type check
python3 dev.py lock           re-pin requirements.lock from pyproject.toml
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".installed-lock"
# npm projects: the JS client (its type checker) and the browser tests (playwright-core).
NPM_PROJECTS = (ROOT / "clients" / "js", ROOT / "tests" / "browser")


# llama-cpp-python (the local model) compiles llama.cpp from source. Its default, native CPU
# tuning crashed here (AMX advertised but unusable) and a build without tuning is ~60x slower,
# so x86-64 builds target AVX2/FMA/F16C/BMI2 (x86-64-v3: Intel Haswell, AMD Excavator and
# later); tokenrelay checks the CPU before starting the model and says so if it cannot run it.
# pip keeps the built wheel in its cache: only the first install pays the ~6 minute build.
LLAMA_CMAKE_ARGS = {
    "x86_64": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON",
    "AMD64": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON",
}


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, env=env)


def _llama_cached() -> bool:
    """Whether pip already has a built llama-cpp-python wheel (so the install is quick)."""
    if (BIN / "python").exists():
        probe = subprocess.run([str(BIN / "python"), "-c", "import llama_cpp"], capture_output=True)
        if probe.returncode == 0:
            return True
    cache = Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip")) / "wheels"
    return any(cache.rglob("llama_cpp_python-*.whl")) if cache.exists() else False


def ensure_venv() -> None:
    """Create or refresh .venv so it matches requirements.lock and pyproject.toml exactly."""
    digest = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = (BIN / "python", "-m", "pip", "--disable-pip-version-check", "-q")
    env = dict(os.environ)
    cmake_args = LLAMA_CMAKE_ARGS.get(platform.machine())
    if cmake_args and "CMAKE_ARGS" not in env:
        env["CMAKE_ARGS"] = cmake_args
    if not _llama_cached():
        print("building llama-cpp-python (once; about 6 minutes on 2 cores) ...", file=sys.stderr)
    _run(*pip, "install", "-r", LOCK, env=env)
    _run(*pip, "install", "--no-deps", "-e", ".")
    STAMP.write_text(digest)


def ensure_node_modules() -> bool:
    """``npm ci`` where package-lock.json changed; False when there is no npm (JS tests skip)."""
    if shutil.which("npm") is None:
        print("npm not found: the JS client and browser tests will be skipped", file=sys.stderr)
        return False
    for project in NPM_PROJECTS:
        stamp = project / "node_modules" / ".installed-lock"
        digest = hashlib.sha256((project / "package-lock.json").read_bytes()).hexdigest()
        if not (stamp.exists() and stamp.read_text() == digest):
            print(f"npm ci in {project.relative_to(ROOT)} ...", file=sys.stderr)
            npm_ci = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
            subprocess.run(npm_ci, cwd=project, check=True)
            stamp.write_text(digest)
    return True


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
        # A person reads this terminal: readable lines unless JSON was asked for.
        env.setdefault("TOKENRELAY_LOG_FORMAT", "console")
        args = [str(BIN / "tokenrelay"), "serve", *rest]
    elif command == "test":
        ensure_node_modules()
        args = [str(BIN / "python"), "-m", "pytest", *rest]
    elif command == "lint":
        paths = [p for p in ("src", "tests", "bench", "dev.py") if (ROOT / p).exists()]
        checks = [
            [str(BIN / "ruff"), "check", *paths],
            [str(BIN / "ruff"), "format", "--check", *paths],
            [str(BIN / "mypy")],
        ]
        if ensure_node_modules():
            checks.append(["npm", "--prefix", "clients/js", "run", "--silent", "typecheck"])
        for args in checks:
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
            "--extra",
            "local",
            "-o",
            str(LOCK),
            "pyproject.toml",
        ]
    return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
