"""Command handlers: load the position's stream, let the domain decide, append what it decided.

An append states the version the decision was made on. If another writer got there first the
command is decided again on the new state (every position command is safe to re-decide: the
domain refuses what no longer makes sense, e.g. closing what is now closed). A caller that named
the version it expects (If-Match) is never re-decided for: it gets StalePosition.

Given a connection in a transaction, a handler first takes a lock on the position for the rest
of that transaction, so commands on one position queue instead of racing and deciding again;
the store's version check still guards against any writer that does not take it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import msgspec

from domain.commands import Command, OpenPosition, UpdateMarketPrices
from domain.errors import DomainError, PositionNotFound
from domain.events import Event, event_from
from domain.position import Position, decide, decide_market_prices, fold
from domain.streams import MARKET_STREAM, position_stream
from eventstore import (
    EventStore,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    WrongExpectedVersion,
)

from .errors import StalePosition, TooMuchContention

RETRIES = 5

Metadata = dict[str, Any]
"""Who asked, from where, in answer to what: written with every event the command records."""


class Outcome(msgspec.Struct, frozen=True):
    state: Position | None
    """The position after the command (None only if it never existed)."""
    recorded: list[RecordedEvent]
    """What was appended; empty when the command changed nothing."""


class PositionHandlers:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def load(
        self,
        position_id: UUID,
        connection: asyncpg.Connection | None = None,
        *,
        owner: str | None = None,
    ) -> Position | None:
        """The position as its events tell it; another owner's position does not exist for you."""
        recorded = await self._store.read_stream(
            position_stream(position_id), connection=connection
        )
        state = fold(event_from(e.event_type, e.data) for e in recorded)
        if owner is not None and state is not None and state.owner != owner:
            raise PositionNotFound()
        return state

    async def handle(
        self,
        position_id: UUID,
        command: Command,
        metadata: Metadata,
        *,
        expected_version: int | None = None,
        owner: str | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> Outcome:
        """Decide and record `command`; with `owner`, only on a position of that owner."""
        for attempt in range(RETRIES):
            # A new position's id was just made: there is nothing to load (or lock) the first time.
            fresh = isinstance(command, OpenPosition) and attempt == 0
            if not fresh:
                await _lock([position_id], connection)
            state = None if fresh else await self.load(position_id, connection, owner=owner)
            if expected_version is not None:
                if state is None or state.deleted:
                    raise PositionNotFound()  # before the version: a 412 would tell it exists
                if state.version != expected_version:
                    raise StalePosition(expected_version, state.version)
            events = decide(command, state)
            if not events:
                return Outcome(state, [])
            try:
                recorded = await self._store.append(
                    position_stream(position_id),
                    _new_events(events, metadata),
                    _version(state),
                    connection=connection,
                )
            except WrongExpectedVersion as conflict:
                if expected_version is not None:
                    raise StalePosition(expected_version, conflict.actual) from conflict
                continue
            return Outcome(fold(events, state), recorded)
        raise TooMuchContention()

    async def handle_each(
        self,
        commands: Sequence[tuple[UUID, Command]],
        metadata: Metadata,
        *,
        owner: str | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> dict[UUID, Outcome | DomainError]:
        """Each command on its own position, accepted or refused on its own, in one transaction.

        Every position is locked before anything is written. The log orders transactions by the
        id each gets at its first write: one that waited for a position after writing another
        would come before the writer it waited for, against that position's own order.
        """
        await _lock([position_id for position_id, _ in commands], connection)
        results: dict[UUID, Outcome | DomainError] = {}
        for position_id, command in commands:
            try:  # handle() locks again: a lock held already is granted at once
                results[position_id] = await self.handle(
                    position_id, command, metadata, owner=owner, connection=connection
                )
            except DomainError as refusal:
                results[position_id] = refusal
        return results

    async def open_together(
        self,
        opens: Sequence[tuple[OpenPosition, Metadata]],
        *,
        connection: asyncpg.Connection | None = None,
    ) -> list[Outcome | DomainError]:
        """Open several new positions in one append; each refusal stays its own command's answer.

        New positions have nothing to load or lock, and their ids are fresh: the append cannot
        conflict, so what the domain accepts is recorded together, in one statement.
        """
        decided = [_refusal_or_events(decide, command, None) for command, _ in opens]
        appends = [
            StreamAppend(
                position_stream(command.position_id),
                _new_events(events, metadata),
                ExpectedVersion.NO_STREAM,
            )
            for (command, metadata), events in zip(opens, decided, strict=True)
            if not isinstance(events, DomainError)
        ]
        recorded = (
            _by_stream(await self._store.append_streams(appends, connection=connection))
            if appends
            else {}
        )
        return [
            events
            if isinstance(events, DomainError)
            else Outcome(fold(events), recorded[position_stream(command.position_id)])
            for (command, _), events in zip(opens, decided, strict=True)
        ]

    async def handle_atomically(
        self,
        commands: Sequence[tuple[UUID, Command]],
        metadata: Metadata,
        *,
        owner: str | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> list[Outcome]:
        """Every command, or none: one atomic append over all the positions' streams.

        Raises AtomicFailure listing each refused command when the domain refuses any of them.
        """
        await _lock([position_id for position_id, _ in commands], connection)
        for _ in range(RETRIES):
            states, decisions, failures = [], [], {}
            for position_id, command in commands:
                try:
                    state = await self.load(position_id, connection, owner=owner)
                    states.append(state)
                    decisions.append(decide(command, state))
                except DomainError as refusal:
                    failures[position_id] = refusal
            if failures:
                raise AtomicFailure(failures)
            appends = [
                StreamAppend(
                    position_stream(position_id), _new_events(events, metadata), _version(state)
                )
                for (position_id, _), state, events in zip(commands, states, decisions, strict=True)
                if events
            ]
            try:
                recorded = (
                    await self._store.append_streams(appends, connection=connection)
                    if appends
                    else []
                )
            except WrongExpectedVersion:
                continue
            by_stream = _by_stream(recorded)
            return [
                Outcome(fold(events, state), by_stream.get(position_stream(position_id), []))
                for (position_id, _), state, events in zip(commands, states, decisions, strict=True)
            ]
        raise TooMuchContention()

    async def update_market_prices(
        self,
        updates: Sequence[PriceUpdate],
        *,
        connection: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent | DomainError]:
        """Price updates of several requests in one append, in the order given; each refusal
        stays its own update's answer, and each accepted update is one event of its own.

        The market stream has no state to decide on, so nothing is loaded: the append expects
        any version, and queues behind other writers of the stream instead of conflicting.
        """
        decided = [_refusal_or_events(decide_market_prices, update.command) for update in updates]
        new_events = [
            event
            for update, events in zip(updates, decided, strict=True)
            if not isinstance(events, DomainError)
            for event in _new_events(events, update.metadata, iter([update.event_id]))
        ]
        recorded = (
            {
                event.event_id: event
                for event in await self._store.append(
                    MARKET_STREAM, new_events, ExpectedVersion.ANY, connection=connection
                )
            }
            if new_events
            else {}
        )
        return [
            events if isinstance(events, DomainError) else recorded[update.event_id]
            for update, events in zip(updates, decided, strict=True)
        ]


class PriceUpdate(NamedTuple):
    command: UpdateMarketPrices
    metadata: Metadata
    event_id: UUID
    """Made by the caller, so that an update run again after a lost commit is recorded once."""


class AtomicFailure(Exception):
    """An all-or-nothing batch in which the domain refused some commands: nothing was recorded."""

    def __init__(self, failures: dict[UUID, DomainError]) -> None:
        self.failures = failures
        super().__init__(f"{len(failures)} of the commands were refused; nothing was recorded")


async def _lock(position_ids: Sequence[UUID], connection: asyncpg.Connection | None) -> None:
    """Queue behind other commands on these positions until the caller's transaction ends."""
    if connection is None or not connection.is_in_transaction():
        return
    await EventStore.lock_streams(
        connection, [position_stream(position_id) for position_id in position_ids]
    )


def _refusal_or_events(
    decision: Callable[..., list[Event]], *arguments: Any
) -> DomainError | list[Event]:
    try:
        return decision(*arguments)
    except DomainError as refusal:
        return refusal


def _by_stream(recorded: Sequence[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    by_stream: dict[str, list[RecordedEvent]] = {}
    for event in recorded:
        by_stream.setdefault(event.stream_id, []).append(event)
    return by_stream


def _version(state: Position | None) -> int:
    return ExpectedVersion.NO_STREAM if state is None else state.version


def _new_events(
    events: Sequence[Event], metadata: Metadata, ids: Iterator[UUID] | None = None
) -> list[NewEvent]:
    """The events to append, with new ids unless `ids` gives them."""
    ids = ids or iter(uuid.uuid4, None)
    return [
        NewEvent(
            event_id=next(ids),
            event_type=type(event).__name__,
            data=event,
            metadata=metadata,
            schema_version=event.SCHEMA_VERSION,
        )
        for event in events
    ]
