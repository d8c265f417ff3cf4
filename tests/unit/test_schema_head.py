"""The gateway's start-up check knows the newest migration without importing Alembic."""

from __future__ import annotations

import subprocess
import sys

from alembic.script import ScriptDirectory

from tokenrelay.ledger.db import SCHEMA_HEAD, alembic_config


def test_schema_head_is_the_newest_packaged_migration() -> None:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head == SCHEMA_HEAD


def test_the_gateway_app_does_not_import_alembic() -> None:
    # About 12 MiB of every gateway's memory (with Mako and Pygments); only migrating needs it.
    code = (
        "import sys, tokenrelay.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako', 'pygments')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
