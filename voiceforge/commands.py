"""The base of this app's `flask` command groups: their errors as one `Error:` line, never a traceback."""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError, ProgrammingError

from voiceforge.errors import VoiceForgeError

UPGRADE_FIRST = "The database has no VoiceForge tables yet: run `flask --app voiceforge db upgrade` first."


class CommandGroup(AppGroup):
    """An AppGroup whose commands report what the services refuse (the API's 4xx/5xx detail) in one line,
    and, run before the first `flask db upgrade`, say to run it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VoiceForgeError as error:
            raise click.ClickException(error.detail) from None
        except (OperationalError, ProgrammingError) as error:
            if _missing_table(error):
                raise click.ClickException(UPGRADE_FIRST) from None
            raise


def _missing_table(error: OperationalError | ProgrammingError) -> bool:
    # SQLite says "no such table"; PostgreSQL's SQLSTATE 42P01 is undefined_table.
    return "no such table" in str(error.orig) or getattr(error.orig, "sqlstate", None) == "42P01"
