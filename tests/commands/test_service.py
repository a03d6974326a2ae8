"""The application service against a real store: once per idempotency key, refusals as answers,
group commit and its fall-back, all-or-nothing batches, and the answer read in the command's
transaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import asyncpg
import pytest

from commands import (
    AtomicFailure,
    CommandService,
    IdempotencyKey,
    KeyReused,
    PriceUpdate,
    ReadBack,
    Reply,
    StoredAnswer,
)
from domain.errors import DomainError, PositionNotFound
from domain.streams import position_stream
from eventstore import EventStore
from projections import queries
from projections.positions import project_positions

from ..domain.given import amend, close, delete, open_position, update_prices


class Counted:
    """A Reply that writes results and refusals as text, counting how often each was rendered."""

    def __init__(self) -> None:
        self.rendered: list[object] = []
        self.refused: list[Exception] = []

    def render(self, result: object) -> StoredAnswer:
        self.rendered.append(result)
        return StoredAnswer(200, {"content-type": "text/plain"}, repr(result).encode())

    def refuse(self, refusal: Exception) -> StoredAnswer:
        self.refused.append(refusal)
        return StoredAnswer(409, {}, type(refusal).__name__.encode())

    @property
    def reply(self) -> Reply:
        return Reply(self.render, self.refuse)


def meta(correlation_id: str = "c1") -> dict[str, str]:
    return {"actor": "ann", "correlation_id": correlation_id}


def key(name: str, request: str = "the request") -> IdempotencyKey:
    return IdempotencyKey("ann", name, request)


class Observed:
    """An Observer that keeps what it was told."""

    def __init__(self) -> None:
        self.transactions = self.commits = 0
        self.shared_ids: list[list[str]] = []

    def began(self) -> None:
        self.transactions += 1

    def committed(self) -> None:
        self.commits += 1

    def shared(self, correlation_ids: Sequence[str]) -> None:
        self.shared_ids.append(list(correlation_ids))


READ_BACK = ReadBack(positions=queries.get_positions, open_positions=queries.count_open)


@pytest.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[EventStore]:
    store = EventStore(pool, inline_projectors=[project_positions])
    yield store
    await store.close()


@pytest.fixture
def observer() -> Observed:
    return Observed()


@pytest.fixture
def service(pool: asyncpg.Pool, store: EventStore, observer: Observed) -> CommandService:
    return CommandService(pool, store, READ_BACK, observer)


async def event_types(store: EventStore, position_id: uuid.UUID) -> list[str]:
    return [event.event_type for event in await store.read_stream(position_stream(position_id))]


async def test_a_retry_with_the_key_gets_the_first_answer_and_records_nothing(
    service: CommandService, store: EventStore, pool: asyncpg.Pool
) -> None:
    """A client's retry of a create makes a new id: the key, not the id, keeps it recorded once."""
    first, retry = uuid.uuid4(), uuid.uuid4()
    reply = Counted()
    answer = await service.open(open_position(position_id=first), meta(), reply.reply, key("k1"))
    again = await service.open(open_position(position_id=retry), meta(), reply.reply, key("k1"))

    assert answer.status_code == 200 and isinstance(again, StoredAnswer)
    assert (again.status_code, again.body) == (answer.status_code, answer.body)
    assert again.headers == {"content-type": "text/plain"}
    assert len(reply.rendered) == 1  # the retry ran nothing, not even the rendering
    assert await event_types(store, first) == ["PositionOpened"]
    assert await event_types(store, retry) == []
    assert await queries.get_position(pool, retry, None) is None


async def test_the_key_with_another_request_is_refused_and_records_nothing(
    service: CommandService, store: EventStore
) -> None:
    position_id = uuid.uuid4()
    await service.open(open_position(), meta(), Counted().reply, key("k2", "one request"))
    with pytest.raises(KeyReused):
        await service.open(
            open_position(position_id=position_id), meta(), Counted().reply, key("k2", "another")
        )
    assert await event_types(store, position_id) == []


async def test_the_same_key_from_another_caller_is_another_request(
    service: CommandService, store: EventStore
) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    for caller, position_id in zip(("ann", "bob"), ids, strict=True):
        opened = open_position(position_id=position_id, owner=caller)
        await service.open(opened, meta(), Counted().reply, IdempotencyKey(caller, "k", "r"))
    assert [await event_types(store, i) for i in ids] == [["PositionOpened"]] * 2


async def test_a_refusal_is_the_first_answer_of_its_key(service: CommandService) -> None:
    """A command the domain refused is not run again by its retry, even once it would succeed."""
    position_id = uuid.uuid4()
    reply = Counted()
    refused = await service.change(position_id, amend(notes="x"), meta(), reply.reply, key("k3"))
    await service.open(open_position(position_id=position_id), meta(), Counted().reply)
    again = await service.change(position_id, amend(notes="x"), meta(), reply.reply, key("k3"))

    assert (refused.status_code, refused.body) == (409, b"PositionNotFound")
    assert (again.status_code, again.body) == (409, b"PositionNotFound")
    assert [type(r) for r in reply.refused] == [PositionNotFound] and reply.rendered == []


async def test_concurrent_keyed_requests_run_once(
    service: CommandService, store: EventStore
) -> None:
    """They queue on the key's lock; the later ones find the stored answer."""
    ids = [uuid.uuid4() for _ in range(5)]
    reply = Counted()
    answers = await asyncio.gather(
        *(service.open(open_position(position_id=i), meta(), reply.reply, key("k4")) for i in ids)
    )
    assert len({answer.body for answer in answers}) == 1
    assert len(reply.rendered) == 1
    assert sorted([len(await event_types(store, i)) for i in ids]) == [0, 0, 0, 0, 1]


async def test_opens_arriving_together_share_one_transaction(
    service: CommandService, store: EventStore, observer: Observed
) -> None:
    """While the first is written, the others queue, and share the next write."""
    ids = [uuid.uuid4() for _ in range(6)]
    reply = Counted()
    answers = await asyncio.gather(
        *(
            service.open(open_position(position_id=i), meta(f"c{n}"), reply.reply)
            for n, i in enumerate(ids)
        )
    )
    assert all(answer.status_code == 200 for answer in answers)
    assert sorted(view.id for view in reply.rendered) == sorted(ids)  # type: ignore[attr-defined]
    assert observer.transactions < len(ids)
    assert sorted(sum(observer.shared_ids, [])) == sorted(f"c{n}" for n in range(6))
    assert [await event_types(store, i) for i in ids] == [["PositionOpened"]] * 6


async def test_a_shared_write_that_fails_as_a_whole_runs_each_command_alone(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    """Whatever failed the shared transaction (perhaps another's command), nothing of it was kept:
    each command runs again in a transaction of its own, and is recorded once."""
    failures = iter([ConnectionResetError("the connection was lost")])

    async def flaky(connection: asyncpg.Connection, ids: list[uuid.UUID]) -> dict:
        for failure in failures:
            raise failure
        return await queries.get_positions(connection, ids)

    service = CommandService(pool, store, ReadBack(flaky, queries.count_open), Observed())
    ids = [uuid.uuid4() for _ in range(3)]
    reply = Counted()
    answers = await asyncio.gather(
        *(service.open(open_position(position_id=i), meta(), reply.reply) for i in ids)
    )
    assert [answer.status_code for answer in answers] == [200] * 3
    assert [await event_types(store, i) for i in ids] == [["PositionOpened"]] * 3


async def test_an_open_refused_in_a_shared_write_leaves_the_others_recorded(
    service: CommandService, store: EventStore
) -> None:
    taken, fresh = uuid.uuid4(), uuid.uuid4()
    await service.open(open_position(position_id=taken), meta(), Counted().reply)
    reply = Counted()
    answers = await asyncio.gather(
        service.open(open_position(position_id=taken), meta(), reply.reply),
        service.open(open_position(position_id=fresh), meta(), reply.reply),
    )
    assert [answer.status_code for answer in answers] == [409, 200]
    assert await event_types(store, taken) == ["PositionOpened"]
    assert await event_types(store, fresh) == ["PositionOpened"]


async def test_an_atomic_batch_refused_part_way_records_nothing(
    service: CommandService, store: EventStore
) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    for position_id in ids:
        await service.open(open_position(position_id=position_id), meta(), Counted().reply)
    await service.change(ids[1], close("110"), meta(), Counted().reply)
    reply = Counted()

    answer = await service.change_each(
        [(i, close("120")) for i in ids], meta(), reply.reply, atomic=True
    )

    assert answer.status_code == 409
    [failure] = reply.refused
    assert isinstance(failure, AtomicFailure) and list(failure.failures) == [ids[1]]
    assert [await event_types(store, i) for i in (ids[0], ids[2])] == [["PositionOpened"]] * 2


async def test_a_batch_accepts_and_refuses_each_command_on_its_own(
    service: CommandService, store: EventStore
) -> None:
    there, missing = uuid.uuid4(), uuid.uuid4()
    await service.open(open_position(position_id=there), meta(), Counted().reply)
    reply = Counted()

    await service.change_each(
        [(there, amend(notes="n")), (missing, amend(notes="n"))], meta(), reply.reply
    )

    [results] = reply.rendered
    assert isinstance(results, dict) and list(results) == [there, missing]
    assert results[there].notes == "n"  # read back inside the command's transaction
    assert isinstance(results[missing], DomainError)
    assert await event_types(store, there) == ["PositionOpened", "NotesChanged"]


async def test_a_change_answers_the_position_as_it_left_it_and_none_once_deleted(
    service: CommandService,
) -> None:
    position_id = uuid.uuid4()
    await service.open(open_position(position_id=position_id), meta(), Counted().reply)
    reply = Counted()
    await service.change(position_id, close("110", "4"), meta(), reply.reply)
    await service.change(position_id, delete(), meta(), reply.reply)
    closed_part, gone = reply.rendered
    assert closed_part.quantity == Decimal("6")  # type: ignore[attr-defined]
    assert gone is None


async def test_a_stale_expected_version_is_refused_not_decided_again(
    service: CommandService, store: EventStore
) -> None:
    position_id = uuid.uuid4()
    await service.open(open_position(position_id=position_id), meta(), Counted().reply)
    await service.change(position_id, amend(notes="first"), meta(), Counted().reply)
    reply = Counted()
    answer = await service.change(
        position_id, amend(notes="late"), meta(), reply.reply, expected_version=1
    )
    assert (answer.status_code, answer.body) == (409, b"StalePosition")
    assert await event_types(store, position_id) == ["PositionOpened", "NotesChanged"]


async def test_price_updates_arriving_together_are_each_recorded_and_counted(
    service: CommandService, store: EventStore
) -> None:
    symbol = f"S{uuid.uuid4().hex[:8].upper()}"
    for _ in range(2):
        await service.open(
            open_position(position_id=uuid.uuid4(), symbol=symbol), meta(), Counted().reply
        )
    reply = Counted()
    updates = [
        PriceUpdate(update_prices({symbol: price}), meta(), uuid.uuid4())
        for price in ("101", "102")
    ]
    await asyncio.gather(*(service.update_prices(update, reply.reply) for update in updates))

    recorded = sorted(reply.rendered, key=lambda r: r.log_position)  # type: ignore[attr-defined]
    assert [(r.symbols, r.open_positions) for r in recorded] == [([symbol], 2)] * 2
    assert recorded[0].log_position < recorded[1].log_position
