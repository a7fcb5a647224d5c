"""This code's newest migration and the one before it, for tests of a database left behind."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from voiceforge.db import MIGRATIONS_DIR

_script = ScriptDirectory(MIGRATIONS_DIR)
HEAD: str = _script.get_current_head()
ONE_BEHIND: str = _script.get_revision(HEAD).down_revision
