-- The event log: the only source of truth. Everything else is rebuilt from it.
--
-- Ordering. A bigint identity is drawn at insert, not at commit, so a reader following
-- "global_position > checkpoint" can pass a row whose transaction has not committed yet and never
-- see it. Each event therefore records the id of the transaction that wrote it (xid8, which never
-- wraps), and readers only read below the snapshot's xmin: every transaction under that barrier has
-- ended, so nothing can ever appear behind a reader's cursor. The log order is
-- (tx_id, global_position); writers are never serialised.

CREATE TABLE streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version > 0)
);

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

-- Append events to one or more streams atomically, in one round trip.
--
-- p_stream_ids / p_expected: one entry per stream; expected version NULL = any, 0 = the stream must
-- not exist, n = the stream must be at exactly version n.
-- The event arrays are parallel, one entry per event, in append order; p_event_streams names the
-- stream of each event.
--
-- Streams are locked in stream_id order so that two multi-stream appends cannot deadlock.
-- A wrong expected version raises SQLSTATE ES409 with the details as JSON. Repeating an append
-- whose event ids are all stored already returns the stored events (appended = false) and writes
-- nothing.
CREATE FUNCTION append_events(
    p_stream_ids      text[],
    p_expected        bigint[],
    p_event_streams   text[],
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_data            jsonb[],
    p_metadata        jsonb[]
) RETURNS TABLE (
    event_id        uuid,
    global_position bigint,
    tx_id           xid8,
    stream_version  bigint,
    recorded_at     timestamptz,
    appended        boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    s         record;
    v_found   bigint;
    v_version bigint;
    v_streams text[] := '{}';
    v_bases   bigint[] := '{}';
BEGIN
    SELECT count(*) INTO v_found FROM events e WHERE e.event_id = ANY (p_event_ids);
    IF v_found = cardinality(p_event_ids) THEN
        RETURN QUERY
            SELECT e.event_id, e.global_position, e.tx_id, e.stream_version, e.recorded_at, false
            FROM events e WHERE e.event_id = ANY (p_event_ids) ORDER BY e.global_position;
        RETURN;
    ELSIF v_found > 0 THEN
        RAISE EXCEPTION 'some of these event ids are already stored, not all'
            USING ERRCODE = 'ES422';
    END IF;

    FOR s IN
        SELECT u.stream_id, u.expected, count(*) AS n
        FROM unnest(p_stream_ids, p_expected) AS u(stream_id, expected)
        JOIN unnest(p_event_streams) AS ev(stream_id) USING (stream_id)
        GROUP BY u.stream_id, u.expected
        ORDER BY u.stream_id
    LOOP
        IF s.expected IS NULL THEN
            INSERT INTO streams AS st (stream_id, version) VALUES (s.stream_id, s.n)
            ON CONFLICT (stream_id) DO UPDATE SET version = st.version + s.n
            RETURNING st.version INTO v_version;
        ELSIF s.expected = 0 THEN
            INSERT INTO streams AS st (stream_id, version) VALUES (s.stream_id, s.n)
            ON CONFLICT (stream_id) DO NOTHING
            RETURNING st.version INTO v_version;
        ELSE
            UPDATE streams AS st SET version = st.version + s.n
            WHERE st.stream_id = s.stream_id AND st.version = s.expected
            RETURNING st.version INTO v_version;
        END IF;

        IF v_version IS NULL THEN
            RAISE EXCEPTION 'wrong expected version for stream %', s.stream_id
                USING ERRCODE = 'ES409',
                      DETAIL = json_build_object(
                          'stream_id', s.stream_id,
                          'expected', s.expected,
                          'actual', (SELECT coalesce(max(st.version), 0) FROM streams st
                                     WHERE st.stream_id = s.stream_id))::text;
        END IF;
        v_streams := v_streams || s.stream_id;
        v_bases := v_bases || (v_version - s.n);
        v_version := NULL;
    END LOOP;

    RETURN QUERY
        INSERT INTO events AS e (event_id, stream_id, stream_version, event_type, schema_version,
                                 data, metadata)
        SELECT ev.event_id, ev.stream_id,
               b.base + row_number() OVER (PARTITION BY ev.stream_id ORDER BY ev.ord),
               ev.event_type, ev.schema_version, ev.data, ev.metadata
        FROM unnest(p_event_streams, p_event_ids, p_event_types, p_schema_versions, p_data,
                    p_metadata)
             WITH ORDINALITY AS ev(stream_id, event_id, event_type, schema_version, data,
                                   metadata, ord)
        JOIN unnest(v_streams, v_bases) AS b(stream_id, base) USING (stream_id)
        ORDER BY ev.ord
        RETURNING e.event_id, e.global_position, e.tx_id, e.stream_version, e.recorded_at, true;
END;
$$;
