"""The base of this app's `flask` command groups: their errors as one `Error:` line, never a traceback."""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup, ScriptInfo
from sqlalchemy.exc import OperationalError, ProgrammingError

from voiceforge.db import database_error, schema_problem
from voiceforge.errors import VoiceForgeError


class CommandGroup(AppGroup):
    """An AppGroup whose commands report what the services refuse (the API's 4xx/5xx detail) in one line,
    and, run on a database behind this code's migrations (or before the first), say to run `db upgrade`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VoiceForgeError as error:
            raise click.ClickException(error.detail) from None
        except (OperationalError, ProgrammingError) as error:
            # Checked only once a command has failed: `model …` commands work before any migration.
            try:
                with ctx.ensure_object(ScriptInfo).load_app().app_context():
                    problem = schema_problem()
            except OperationalError as unavailable:
                raise click.ClickException(database_error(unavailable)) from None
            if problem:
                raise click.ClickException(problem) from None
            if isinstance(error, OperationalError):  # the database's state (locked, full), not a bug
                raise click.ClickException(database_error(error)) from None
            raise
