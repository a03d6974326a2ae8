"""The log's transaction clock after a logical restore into another PostgreSQL cluster.

Each event carries the id of the transaction that wrote it (`tx_id`), and the log is read below
the snapshot's xmin. `pg_dump` keeps those ids, but they belong to the old cluster's counter: in a
cluster whose counter is behind, the restored events never fall below xmin (readers wait for them
for ever) and new events would sort before them. `check_clock` finds that; `reclock` renumbers the
restored `tx_id`s under the new cluster's counter, keeping the log's order exactly.
"""

from __future__ import annotations

import asyncpg

from .errors import LogClockAhead

_LOG_CLOCK = """
SELECT (SELECT tx_id FROM events ORDER BY tx_id DESC LIMIT 1)::text::bigint AS newest,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next
"""

# The new clock: walking the log in its order, the value goes up by one wherever global_position
# goes down (a transaction that began earlier drew a later identity). Within one value the
# positions rise, so (new tx_id, global_position) orders the log as (tx_id, global_position) did,
# with as few distinct values as that needs.
_STEPS = """
SELECT global_position,
       count(*) FILTER (WHERE descends) OVER (ORDER BY tx_id, global_position) AS step
FROM (
    SELECT global_position, tx_id,
           global_position < lag(global_position) OVER (ORDER BY tx_id, global_position)
               AS descends
    FROM events
) AS walk
"""
_LOCK = "LOCK TABLE events, checkpoints IN EXCLUSIVE MODE"
# Every new value must lie below the transaction ids to come: spend ids until the counter is past
# them (needed only where the log holds more reorderings than this cluster has used ids).
_ADVANCE = """
DO $$ BEGIN
    WHILE pg_snapshot_xmax(pg_current_snapshot())::text::bigint
          <= current_setting('eventstore.reclock_until')::bigint LOOP
        PERFORM pg_current_xact_id();
        COMMIT;
    END LOOP;
END $$
"""
_REWRITE = f"""
UPDATE events AS e SET tx_id = ($1::bigint + r.step)::text::xid8
FROM ({_STEPS}) AS r WHERE e.global_position = r.global_position
"""
_CHECKPOINTS = """
UPDATE checkpoints AS c SET tx_id = e.tx_id
FROM events AS e WHERE e.global_position = c.global_position
"""
FIRST = 3
"""The first value of the new clock: PostgreSQL's first normal transaction id."""


async def check_clock(connection: asyncpg.Connection) -> None:
    """Raise LogClockAhead if the log holds transaction ids this cluster has not reached."""
    row = await connection.fetchrow(_LOG_CLOCK)
    if row["newest"] is not None and row["newest"] >= row["next"]:
        raise LogClockAhead(row["newest"], row["next"])


async def reclock(connection: asyncpg.Connection) -> int:
    """Renumber the log's tx_ids under this cluster's counter, keeping its order; the number of
    events renumbered (0 when the clock is not ahead). Writers are locked out meanwhile."""
    try:
        await check_clock(connection)
        return 0
    except LogClockAhead:
        pass
    steps = await connection.fetchval(f"SELECT coalesce(max(step), 0) FROM ({_STEPS}) AS s")
    await connection.execute(
        "SELECT set_config('eventstore.reclock_until', $1, false)", str(FIRST + steps)
    )
    await connection.execute(_ADVANCE)
    async with connection.transaction():
        await connection.execute(_LOCK)
        # The one rewrite the log allows: of its clock, never of an event's content.
        await connection.execute("ALTER TABLE events DISABLE TRIGGER events_reject_update_delete")
        renumbered = int((await connection.execute(_REWRITE, FIRST)).split()[-1])
        await connection.execute("ALTER TABLE events ENABLE TRIGGER events_reject_update_delete")
        await connection.execute(_CHECKPOINTS)
    return renumbered
