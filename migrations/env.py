"""Alembic environment for Flask-Migrate: the URL and metadata come from the running app."""
import logging

from alembic import context
from alembic.util import CommandError
from flask import current_app

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Alembic's INFO lines (each migration it runs) are for `flask db ...` run from a shell, in the service's
# own format (VOICEFORGE_LOG_FORMAT: compose migrates with JSON before it serves) and at its level
# (VOICEFORGE_LOG_LEVEL=warning quiets them). Where logging is already configured (the service
# process, gunicorn, pytest's capture) nothing is changed.
if not logging.getLogger().handlers:
    from voiceforge.logs import configure_logging
    from voiceforge.runtime import get_runtime

    _settings = get_runtime(current_app).settings
    configure_logging(_settings.log_level, _settings.log_format, install_handler=True)
    for _name in ("alembic", "flask_migrate"):
        logging.getLogger(_name).setLevel(_settings.log_level)
logger = logging.getLogger('alembic.env')


def get_engine():
    try:
        # this works with Flask-SQLAlchemy<3 and Alchemical
        return current_app.extensions['migrate'].db.get_engine()
    except (TypeError, AttributeError):
        # this works with Flask-SQLAlchemy>=3
        return current_app.extensions['migrate'].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace(
            '%', '%%')
    except AttributeError:
        return str(get_engine().url).replace('%', '%%')


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option('sqlalchemy.url', get_engine_url())
target_db = current_app.extensions['migrate'].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, 'metadatas'):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url, target_metadata=get_metadata(), literal_binds=True
    )

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, 'autogenerate', False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info('No changes in schema detected.')

    conf_args = current_app.extensions['migrate'].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()

    with connectable.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table on SQLite (copy, DROP, rename). With the app's
            # foreign_keys=ON, dropping `voices` would run ON DELETE CASCADE and empty `jobs`. Alembic's
            # documented fix: foreign keys off for the migration. The pragma is ignored inside a
            # transaction, so it is set (and committed) before the migration's transaction begins.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            # On SQLite too, every step of one `db upgrade` or `downgrade` commits together or not at
            # all, so a refused check below leaves the database as it was.
            context.configure(
                connection=connection,
                target_metadata=get_metadata(),
                transactional_ddl=True,
                **conf_args
            )

            with context.begin_transaction():
                if sqlite:
                    # pysqlite itself would begin only at the first INSERT, after some DDL has run.
                    connection.exec_driver_sql("BEGIN")
                context.run_migrations()
                if sqlite:
                    _check_foreign_keys(connection)
        finally:
            if sqlite:
                # The connection goes back to the app's pool: the app relies on foreign keys being on.
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def _check_foreign_keys(connection):
    """With foreign keys off, nothing stopped a migration leaving rows that point nowhere: refuse to
    commit it then (Flask-Migrate prints a CommandError as one `Error:` line)."""
    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if dangling:
        found = ", ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in dangling[:5])
        raise CommandError(f"the migration would leave {len(dangling)} row(s) whose foreign key points "
                           f"nowhere ({found}); nothing was committed")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
