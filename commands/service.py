"""The application service: what a command needs besides the domain.

A route parses a request into a command and renders what comes back; in between, this service
- runs the command in a transaction: its own, or one shared with the requests that arrived while
  the previous one was written (group commit: new positions and price updates);
- runs it once per idempotency key, storing the answer in the same transaction;
- lets the handlers decide and record it (they retry on a version conflict and queue commands on
  one position);
- reads the positions it left back inside that transaction, so an answer always shows what its
  command did.

It knows neither HTTP nor the read model's tables: the transport passes a Reply that renders
results and refusals, and the composition root passes the ReadBack queries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Generic, NamedTuple, Protocol, TypeVar
from uuid import UUID

import asyncpg

from domain.commands import Command, OpenPosition
from domain.errors import DomainError
from eventstore import EventStore

from . import idempotency
from .errors import StalePosition, TooMuchContention
from .group_commit import GroupCommit, GroupWriteFailed
from .handlers import AtomicFailure, Metadata, Outcome, PositionHandlers, PriceUpdate
from .idempotency import Answer, IdempotencyKey

View = TypeVar("View")
Result = TypeVar("Result")
Item = TypeVar("Item")

REFUSALS = (DomainError, StalePosition, TooMuchContention, AtomicFailure)
"""What a command may be refused for: an answer like any other (and stored as one)."""


@dataclass(frozen=True)
class ReadBack(Generic[View]):
    """The read-model queries an answer is made of, run in the command's transaction."""

    positions: Callable[[asyncpg.Connection, list[UUID]], Awaitable[dict[UUID, View]]]
    """The views of those of these positions that exist, by id."""
    open_positions: Callable[[asyncpg.Connection, list[str]], Awaitable[dict[str, int]]]
    """How many open positions each of these symbols has."""


@dataclass(frozen=True)
class Reply(Generic[Result]):
    """How the transport answers a command: called inside the transaction when a key stores it."""

    render: Callable[[Result], Answer]
    refuse: Callable[[Exception], Answer]
    """For one of REFUSALS."""


class Observer(Protocol):
    """Told about each command transaction (the metrics count what committed, the logs say whose
    write a shared one is)."""

    def began(self) -> None: ...
    def committed(self) -> None: ...
    def shared(self, correlation_ids: Sequence[str]) -> None: ...


class PricesRecorded(NamedTuple):
    symbols: list[str]
    open_positions: int
    """Open positions in those symbols: the positions whose market price changed."""
    log_position: int


Work = Callable[[asyncpg.Connection], Awaitable[Result]]


class CommandService(Generic[View]):
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        read_back: ReadBack[View],
        observer: Observer,
    ) -> None:
        self._pool = pool
        self._store = store
        self._read_back = read_back
        self._observer = observer
        self._handlers = PositionHandlers(store)
        self._opens: GroupCommit[tuple[OpenPosition, Metadata], View] = GroupCommit(
            self._open_together
        )
        # One writer: the market is one stream, and its appends queue on its lock anyway.
        self._price_updates: GroupCommit[PriceUpdate, PricesRecorded] = GroupCommit(
            self._record_prices_together, writers=1
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in a transaction, for commands."""
        self._observer.began()
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                yield connection
        finally:
            self._store.committed()  # or rolled back: a needless wake-up costs one read
        self._observer.committed()

    async def open(
        self,
        command: OpenPosition,
        metadata: Metadata,
        reply: Reply[View],
        key: IdempotencyKey | None = None,
    ) -> Answer:
        """A new position, recorded with the others opened meanwhile."""
        return await self._grouped(
            self._opens,
            (command, metadata),
            self._then_read_back(
                command.position_id,
                partial(self._handlers.handle, command.position_id, command, metadata),
            ),
            reply,
            key,
        )

    async def change(
        self,
        position_id: UUID,
        command: Command,
        metadata: Metadata,
        reply: Reply[View | None],
        key: IdempotencyKey | None = None,
        *,
        expected_version: int | None = None,
        owner: str | None = None,
    ) -> Answer:
        """A command on one position; the result is the position after it (None: deleted).

        With `expected_version` the command is refused (StalePosition) rather than decided again
        when the position is at another version; with `owner`, only that owner's position is seen.
        """
        handle = partial(
            self._handlers.handle,
            position_id,
            command,
            metadata,
            expected_version=expected_version,
            owner=owner,
        )
        return await self._run(self._then_read_back(position_id, handle), reply, key)

    async def change_each(
        self,
        commands: Sequence[tuple[UUID, Command]],
        metadata: Metadata,
        reply: Reply[dict[UUID, View | None | DomainError]],
        key: IdempotencyKey | None = None,
        *,
        atomic: bool = False,
        owner: str | None = None,
    ) -> Answer:
        """Commands on several positions in one transaction: each accepted or refused on its own,
        or (`atomic`) all of them or none (refused with AtomicFailure)."""

        async def work(connection: asyncpg.Connection) -> dict[UUID, View | None | DomainError]:
            handlers, ids = self._handlers, [position_id for position_id, _ in commands]
            if atomic:
                await handlers.handle_atomically(
                    commands, metadata, owner=owner, connection=connection
                )
                refused: dict[UUID, DomainError] = {}
            else:
                outcomes = await handlers.handle_each(
                    commands, metadata, owner=owner, connection=connection
                )
                refused = {i: r for i, r in outcomes.items() if isinstance(r, DomainError)}
            views = await self._read_back.positions(
                connection, [i for i in ids if i not in refused]
            )
            return {i: refused[i] if i in refused else views.get(i) for i in ids}

        return await self._run(work, reply, key)

    async def update_prices(
        self, update: PriceUpdate, reply: Reply[PricesRecorded], key: IdempotencyKey | None = None
    ) -> Answer:
        """Market prices, recorded with the other updates made meanwhile: each its own event."""

        async def alone(connection: asyncpg.Connection) -> PricesRecorded:
            [result] = await self._record_prices(connection, [update])
            if isinstance(result, DomainError):
                raise result
            return result

        # Run again alone after a failed group write, its event id keeps it recorded once.
        return await self._grouped(self._price_updates, update, alone, reply, key)

    def _then_read_back(
        self, position_id: UUID, handle: Callable[..., Awaitable[Outcome]]
    ) -> Work[View | None]:
        """`handle(connection=...)` (a handlers.handle with its arguments bound), then the
        position as it left it (None: deleted)."""

        async def work(connection: asyncpg.Connection) -> View | None:
            outcome = await handle(connection=connection)
            if outcome.state is not None and outcome.state.deleted:
                return None
            return (await self._read_back.positions(connection, [position_id])).get(position_id)

        return work

    async def _run(
        self, work: Work[Result], reply: Reply[Result], key: IdempotencyKey | None
    ) -> Answer:
        """`work` in a transaction of its own, once per `key`."""
        if key is None:
            try:
                async with self.transaction() as connection:
                    return reply.render(await work(connection))
            except REFUSALS as refusal:  # rolled back: nothing of it is kept
                return reply.refuse(refusal)
        async with self.transaction() as connection:
            stored = await idempotency.recall(connection, key)
            if stored is not None:
                return stored
            try:
                answer = reply.render(await work(connection))
            except REFUSALS as refusal:  # the refusal is the first answer too
                answer = reply.refuse(refusal)
            await idempotency.remember(connection, key, answer)
            return answer

    async def _grouped(
        self,
        group: GroupCommit[Item, Result],
        item: Item,
        alone: Work[Result],
        reply: Reply[Result],
        key: IdempotencyKey | None,
    ) -> Answer:
        """`item` in a write shared with what else is queued; alone when that write failed as a
        whole (perhaps for another's command), or with a key (its answer is stored with it)."""
        if key is None:
            try:
                result = await group.submit(item)
            except GroupWriteFailed:
                pass
            except REFUSALS as refusal:
                return reply.refuse(refusal)
            else:
                return reply.render(result)
        return await self._run(alone, reply, key)

    @asynccontextmanager
    async def _shared_transaction(
        self, metadata: Sequence[Metadata]
    ) -> AsyncIterator[asyncpg.Connection]:
        self._observer.shared([each["correlation_id"] for each in metadata])
        async with self.transaction() as connection:
            yield connection

    async def _open_together(
        self, opens: list[tuple[OpenPosition, Metadata]]
    ) -> list[View | DomainError]:
        async with self._shared_transaction([metadata for _, metadata in opens]) as connection:
            outcomes = await self._handlers.open_together(opens, connection=connection)
            views = await self._read_back.positions(
                connection, [command.position_id for command, _ in opens]
            )
        return [
            outcome if isinstance(outcome, DomainError) else views[command.position_id]
            for (command, _), outcome in zip(opens, outcomes, strict=True)
        ]

    async def _record_prices_together(
        self, updates: list[PriceUpdate]
    ) -> list[PricesRecorded | DomainError]:
        async with self._shared_transaction([update.metadata for update in updates]) as connection:
            return await self._record_prices(connection, updates)

    async def _record_prices(
        self, connection: asyncpg.Connection, updates: Sequence[PriceUpdate]
    ) -> list[PricesRecorded | DomainError]:
        results = await self._handlers.update_market_prices(updates, connection=connection)
        symbols = {
            symbol
            for result in results
            if not isinstance(result, DomainError)
            for symbol in result.data["prices"]
        }
        open_positions = await self._read_back.open_positions(connection, sorted(symbols))
        return [
            result
            if isinstance(result, DomainError)
            else PricesRecorded(
                symbols=sorted(result.data["prices"]),
                open_positions=sum(open_positions.get(s, 0) for s in result.data["prices"]),
                log_position=result.global_position,
            )
            for result in results
        ]
