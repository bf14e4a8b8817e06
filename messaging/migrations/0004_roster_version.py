"""Conversation.roster_version and the PostgreSQL triggers that raise it.

A conversation's roster is what a send must cover: its participants, each one's current devices
(not revoked, with an identity key) and their usernames. Any change to those rows raises the
version of every conversation it touches, in the database, whatever made the change (the API,
the admin, a queryset update, a cascade). The group commit's store then checks one number per
conversation instead of re-reading the roster (services._known)."""

from django.conf import settings
from django.db import migrations, models

FUNCTIONS = """
CREATE FUNCTION enigmo_roster_bump(conversations bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- locked in id order, as the group commit locks them, so the two never deadlock
    PERFORM 1 FROM {conversation} WHERE id = ANY(conversations) ORDER BY id FOR UPDATE;
    UPDATE {conversation} SET roster_version = roster_version + 1 WHERE id = ANY(conversations);
END $$;

CREATE FUNCTION enigmo_roster_bump_users(users bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM enigmo_roster_bump(ARRAY(SELECT conversation_id FROM {participant} WHERE user_id = ANY(users)));
END $$;

-- TG_ARGV[0]: the changed row's column naming what to bump, a conversation
-- ('conversation_id') or a user, every conversation of whom is bumped (any other column)
CREATE FUNCTION enigmo_roster_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[] := ARRAY[]::bigint[];
BEGIN
    IF TG_OP <> 'INSERT' THEN
        ids := ids || (to_jsonb(OLD) ->> TG_ARGV[0])::bigint;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        ids := ids || (to_jsonb(NEW) ->> TG_ARGV[0])::bigint;
    END IF;
    IF TG_ARGV[0] = 'conversation_id' THEN
        PERFORM enigmo_roster_bump(ids);
    ELSE
        PERFORM enigmo_roster_bump_users(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER enigmo_roster AFTER INSERT OR DELETE OR UPDATE OF conversation_id, user_id ON {participant}
    FOR EACH ROW EXECUTE FUNCTION enigmo_roster_changed('conversation_id');
CREATE TRIGGER enigmo_roster AFTER INSERT OR DELETE OR UPDATE OF user_id, device_id, revoked_at ON {device}
    FOR EACH ROW EXECUTE FUNCTION enigmo_roster_changed('user_id');
CREATE TRIGGER enigmo_roster AFTER INSERT OR DELETE OR UPDATE OF user_id, device_id ON {identitykey}
    FOR EACH ROW EXECUTE FUNCTION enigmo_roster_changed('user_id');
CREATE TRIGGER enigmo_roster AFTER UPDATE OF username ON {user}
    FOR EACH ROW WHEN (OLD.username IS DISTINCT FROM NEW.username) EXECUTE FUNCTION enigmo_roster_changed('id');
"""

DROP = """
DROP TRIGGER IF EXISTS enigmo_roster ON {participant};
DROP TRIGGER IF EXISTS enigmo_roster ON {device};
DROP TRIGGER IF EXISTS enigmo_roster ON {identitykey};
DROP TRIGGER IF EXISTS enigmo_roster ON {user};
DROP FUNCTION IF EXISTS enigmo_roster_changed(), enigmo_roster_bump_users(bigint[]), enigmo_roster_bump(bigint[]);
"""


def _tables(apps):
    return {
        "conversation": apps.get_model("messaging", "Conversation")._meta.db_table,
        "participant": apps.get_model("messaging", "Participant")._meta.db_table,
        "device": apps.get_model("keys", "Device")._meta.db_table,
        "identitykey": apps.get_model("keys", "IdentityKey")._meta.db_table,
        "user": apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table,
    }


def _run(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":  # SQLite has no group commit to serve
            schema_editor.execute(sql.format(**_tables(apps)))

    return run


class Migration(migrations.Migration):

    dependencies = [
        ('keys', '0001_initial'),
        ('messaging', '0003_lean_indexes'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='conversation',
            name='roster_version',
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.RunPython(_run(FUNCTIONS), _run(DROP)),
    ]
