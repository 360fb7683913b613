"""On PostgreSQL, the audit log refuses TRUNCATE too (a row trigger does not see it).

One way through is left for the table's owner, who could disable the triggers anyway: a session
that sets `ordinaut.audit_truncate = allow` (the test suite does, so that it can empty the database
between tests). Any other role, and the owner without the setting, is refused.

With 0002 (UPDATE and DELETE refused), only the table's owner can still get round the triggers
(ALTER TABLE ... DISABLE TRIGGER, session_replication_role as a superuser): the running
application connects as a role that owns nothing (`manage.py db_app_role`, docs/operations.md).
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION ordinaut_auditlog_no_truncate() RETURNS trigger AS $$
BEGIN
    IF current_setting('ordinaut.audit_truncate', true) = 'allow'
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'ordinaut_auditlog is append-only: TRUNCATE refused'
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ordinaut_auditlog_no_truncate
    BEFORE TRUNCATE ON ordinaut_auditlog
    FOR EACH STATEMENT EXECUTE FUNCTION ordinaut_auditlog_no_truncate();
"""

DROP = """
DROP TRIGGER IF EXISTS ordinaut_auditlog_no_truncate ON ordinaut_auditlog;
DROP FUNCTION IF EXISTS ordinaut_auditlog_no_truncate();
"""


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("ordinaut", "0005_token_scopes")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
