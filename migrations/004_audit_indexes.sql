-- What auditors ask of the log: by time, by who acted, by whose position it was.

CREATE INDEX events_recorded_at_idx ON events (recorded_at, tx_id, global_position);
CREATE INDEX events_actor_idx ON events ((metadata->>'actor'), tx_id, global_position);
-- A position's owner is named once, when it is opened.
CREATE INDEX events_position_owner_idx ON events ((data->>'owner'))
    WHERE event_type = 'PositionOpened';
