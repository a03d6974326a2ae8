-- The event log: the only source of truth. Everything else is rebuilt from it.
--
-- Ordering. A bigint identity is drawn at insert, not at commit, so a reader following
-- "global_position > checkpoint" can pass a row whose transaction has not committed yet and never
-- see it. Each event therefore records the id of the transaction that wrote it (xid8, which never
-- wraps), and readers only read below the snapshot's xmin: every transaction under that barrier has
-- ended, so nothing can ever appear behind a reader's cursor. The log order is
-- (tx_id, global_position); writers are never serialised.
--
-- Concurrency per stream comes from the unique (stream_id, stream_version) index: two writers
-- that decided on the same version cannot both insert its successor.

CREATE TABLE events (
    global_position bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    stream_category text        NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1 CHECK (schema_version > 0),
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- The subscription order and its cursor.
CREATE INDEX events_log_order_idx ON events (tx_id, global_position);

-- Append-only, enforced by the database itself, whoever connects.
CREATE FUNCTION events_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % is not allowed on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_reject_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();

CREATE TRIGGER events_reject_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- Where each consumer of the log has got to. A consumer writes its checkpoint in the same
-- transaction as the changes it made for those events, with a compare-and-set on the old value,
-- so a second runner of the same consumer is detected instead of applying events twice.
CREATE TABLE checkpoints (
    subscriber      text        PRIMARY KEY,
    tx_id           xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
