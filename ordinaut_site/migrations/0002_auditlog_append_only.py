"""On PostgreSQL, a trigger refuses UPDATE and DELETE on the audit log (append-only).

SQLite (quick start only) has no such guard; the admin and services never update or delete rows.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION ordinaut_auditlog_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ordinaut_auditlog is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS ordinaut_auditlog_append_only ON ordinaut_auditlog;
CREATE TRIGGER ordinaut_auditlog_append_only
    BEFORE UPDATE OR DELETE ON ordinaut_auditlog
    FOR EACH ROW EXECUTE FUNCTION ordinaut_auditlog_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS ordinaut_auditlog_append_only ON ordinaut_auditlog;
DROP FUNCTION IF EXISTS ordinaut_auditlog_append_only();
"""


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("ordinaut", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
