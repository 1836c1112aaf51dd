-- The outbox table Tidings relays (docs/consumers.md, "Publishing from your database
-- transaction"). Run it once, in the schema your application uses (psql -f docs/outbox.sql),
-- or copy it into your migrations.
--
-- The application inserts one row per event in the same transaction as its business rows:
--
--   INSERT INTO tidings_outbox (payload, partition_key)
--   VALUES ('{"customer": "alice", "order": {"id": 42}}', 'alice');
--
-- Tidings publishes committed rows, oldest first, and deletes them. A transaction that rolls
-- back leaves no row, so nothing is published for it.

CREATE TABLE IF NOT EXISTS tidings_outbox (
    -- The relay's order, and (with the table's oid) the update's id: rows relayed twice after
    -- a crash are stored once.
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The message the consumer's mapping reads (JSON pointers: {/customer}, data=/order).
    payload       jsonb NOT NULL,
    -- What must stay in order (a topic, a session): rows with the same key are relayed by one
    -- instance, in order, when the consumer spreads the work over partitions=N.
    partition_key text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Wakes the relay when a transaction that inserted rows commits (NOTIFY is delivered at
-- commit, and not at all on rollback). Without it the relay still reads every poll interval.
CREATE OR REPLACE FUNCTION tidings_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidings_outbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tidings_outbox_notify ON tidings_outbox;
CREATE TRIGGER tidings_outbox_notify
    AFTER INSERT ON tidings_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tidings_outbox_notify();
