"""``--baseline REF``: an older commit's code, checked out beside this one for the same run.

Comparing against a number from an earlier run compares two states of the machine as much as
two versions of the code: on a shared VM runs minutes apart differ by more than most changes
do. So the baseline is measured in the same run, as processes of its own: a detached git
worktree of REF in the run's scratch directory, whose ``src`` the baseline's gateways import
``tokenrelay`` from. Nothing of the baseline is imported into the harness; its gateways only
have to accept today's command line (``tokenrelay serve --port P --config FILE``), TOML
configuration and environment variables.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from processes import ROOT, log, tokenrelay_origin
from results import Baseline


def head() -> str:
    """This checkout's commit (short hash), or "" outside a git checkout."""
    try:
        return git("rev-parse", "--short", "HEAD")
    except (RuntimeError, OSError):
        return ""


def git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def resolve(ref: str) -> str:
    """The commit ``ref`` names (full hash); RuntimeError if it names none."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except RuntimeError:
        raise RuntimeError(f"--baseline {ref!r}: not a commit of {ROOT}") from None


def add_worktree(ref: str, directory: Path) -> Baseline:
    """Check ``ref`` out in ``directory`` (detached) and check that children would run its code."""
    commit = resolve(ref)
    short = git("rev-parse", "--short", commit)
    git("worktree", "add", "--detach", str(directory), commit)
    log(f"baseline {ref} = {short} checked out in {directory}")
    origin = tokenrelay_origin(directory / "src")
    if not Path(origin).resolve().is_relative_to((directory / "src").resolve()):
        raise RuntimeError(f"baseline children would import tokenrelay from {origin}, not {directory}/src")
    log(f"baseline children import tokenrelay from {origin}")
    return Baseline(
        ref=ref,
        commit=short,
        subject=git("log", "-1", "--format=%s", commit),
        # What runs as "this commit" is the working tree: say so when it is not HEAD.
        this_dirty=bool(git("status", "--porcelain", "--", "src")),
        tokenrelay_file=origin,
    )


def remove_worktree(directory: Path) -> None:
    """Undo ``add_worktree``; a failure is logged, not raised (the run's results are worth more)."""
    try:
        git("worktree", "remove", "--force", str(directory))
    except RuntimeError as exc:
        log(f"could not remove the baseline worktree: {exc}")
        return
    log(f"baseline worktree {directory} removed")
