"""Where each consumer of the log has got to.

A consumer saves its checkpoint on the same connection, in the same transaction, as the writes it
made for those events: both commit or neither does, so each event takes effect exactly once. The
save is a compare-and-set on the previous value, so a second runner of the same consumer fails
with `CheckpointConflict` instead of applying events twice.
"""

from __future__ import annotations

import asyncpg

from .errors import CheckpointConflict
from .events import START, LogPosition

_LOAD = "SELECT tx_id, global_position FROM checkpoints WHERE subscriber = $1"

_SAVE = """
INSERT INTO checkpoints AS c (subscriber, tx_id, global_position) VALUES ($1, $4, $5)
ON CONFLICT (subscriber) DO UPDATE
    SET tx_id = excluded.tx_id, global_position = excluded.global_position, updated_at = now()
    WHERE c.tx_id = $2 AND c.global_position = $3
RETURNING 1
"""


async def load_checkpoint(connection: asyncpg.Connection, subscriber: str) -> LogPosition:
    row = await connection.fetchrow(_LOAD, subscriber)
    return LogPosition(row["tx_id"], row["global_position"]) if row else START


async def save_checkpoint(
    connection: asyncpg.Connection, subscriber: str, previous: LogPosition, new: LogPosition
) -> None:
    """Move `subscriber` from `previous` to `new`, or raise `CheckpointConflict`."""
    saved = await connection.fetchval(
        _SAVE,
        subscriber,
        previous.tx_id,
        previous.global_position,
        new.tx_id,
        new.global_position,
    )
    if saved is None:
        raise CheckpointConflict(subscriber)


async def reset_checkpoint(connection: asyncpg.Connection, subscriber: str) -> None:
    """Forget a consumer's place, so that it starts again from the beginning (a rebuild)."""
    await connection.execute("DELETE FROM checkpoints WHERE subscriber = $1", subscriber)
