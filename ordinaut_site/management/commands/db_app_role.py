"""`manage.py db_app_role ROLE [--password-env VAR]`: the least-privilege PostgreSQL role the running
application connects as (docs/operations.md).

Run it as the owner of the tables (the role `manage.py migrate` runs as), after migrating. The role
it creates or updates owns nothing: it reads and writes the application's tables, may only SELECT
and INSERT on the audit log (no UPDATE, DELETE or TRUNCATE), and, not owning the audit table, cannot
disable its triggers; not a superuser, it cannot set session_replication_role either. Running it
again is harmless, and also grants what later migrations created.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from psycopg import sql

AUDIT_TABLE = "ordinaut_auditlog"
# What the role must not be, in the order pg_roles is read below.
ROLE_ATTRIBUTES = ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "NOBYPASSRLS")


class Command(BaseCommand):
    help = "Create or update the least-privilege PostgreSQL role the web, workers, beat and consumer connect as."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", help="The application role's name, e.g. ordinaut_app.")
        parser.add_argument(
            "--password-env",
            default="",
            help="The environment variable holding the role's password (never a command-line argument, "
            "which would show in `ps`). Without it the role has no password (peer or trust auth).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("db_app_role is for PostgreSQL; the SQLite quick start has no roles.")
        role = options["role"]
        password = None
        if options["password_env"]:
            password = os.environ.get(options["password_env"])
            if not password:
                raise CommandError(f"{options['password_env']} is not set or empty.")
        name = sql.Identifier(role)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
                "WHERE rolname = %s",
                [role],
            )
            existing = cursor.fetchone()
            verb = "ALTER" if existing else "CREATE"
            # An existing role is altered only in the attributes it should not have: an owner that is
            # not a superuser (CREATEROLE, as on managed databases) may not name SUPERUSER,
            # REPLICATION or BYPASSRLS at all, even to turn them off, so every later run would fail.
            held = existing or (True,) * len(ROLE_ATTRIBUTES)
            clauses = [clause for clause, has in zip(ROLE_ATTRIBUTES, held, strict=True) if has]
            statement = sql.SQL("{} ROLE {} LOGIN {}").format(sql.SQL(verb), name, sql.SQL(" ".join(clauses)))
            if password is not None:
                statement += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
            raw = cursor.cursor if hasattr(cursor, "cursor") else cursor
            raw.execute(statement)
            cursor.execute("SELECT current_database(), current_schema()")
            database, schema = cursor.fetchone()
            database_name, schema_name = sql.Identifier(database), sql.Identifier(schema)
            for template in (
                "GRANT CONNECT ON DATABASE {db} TO {role}",
                "GRANT USAGE ON SCHEMA {schema} TO {role}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
                "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
                "REVOKE UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON {audit} FROM {role}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
            ):
                raw.execute(
                    sql.SQL(template).format(
                        db=database_name, schema=schema_name, role=name, audit=sql.Identifier(AUDIT_TABLE)
                    )
                )
        self.stdout.write(
            f"{'altered' if existing else 'created'} role {role}: reads and writes the tables of {database}.{schema}, "
            f"SELECT and INSERT only on {AUDIT_TABLE}; owns nothing. Connect the processes as {role}; "
            "run migrations as the owner."
        )
