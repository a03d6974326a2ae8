"""GroupCommit: requests that queue while a write is in flight share the next write."""

from __future__ import annotations

import asyncio

import pytest

from commands.group_commit import GroupCommit, GroupWriteFailed


class Writes:
    """A write function that records each group and holds it until released."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.groups.append(items)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        if any(item < 0 for item in items) and 0 in items:
            raise RuntimeError("the group failed as a whole")
        return [ValueError(item) if item < 0 else item * 10 for item in items]


async def test_a_request_alone_is_written_at_once() -> None:
    writes = Writes()
    group = GroupCommit(writes)
    assert await asyncio.wait_for(group.submit(1), 1) == 10
    assert writes.groups == [[1]]


async def test_a_request_made_as_the_last_write_ends_is_written() -> None:
    # The write answers without waiting, so each caller asks again before its writer's task has
    # ended: the writer must be counted free already.
    group = GroupCommit(Writes(), writers=1)
    async with asyncio.timeout(1):  # (wait_for would submit from a task of its own, later)
        for n in range(5):
            assert await group.submit(n) == n * 10


async def test_requests_queued_behind_a_busy_writer_share_the_next_write() -> None:
    writes = Writes()
    writes.release.clear()
    group = GroupCommit(writes, writers=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)  # the writer takes 1 and waits on the "database"
    rest = [asyncio.create_task(group.submit(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    writes.release.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40, 50, 60]
    assert writes.groups == [[1], [2, 3, 4, 5, 6]]  # in arrival order


async def test_no_more_writes_are_in_flight_than_writers_and_groups_respect_the_limit() -> None:
    writes = Writes()
    writes.release.clear()
    group = GroupCommit(writes, writers=2, limit=3)
    tasks = [asyncio.create_task(group.submit(n)) for n in range(1, 11)]
    await asyncio.sleep(0.01)
    assert writes.most_in_flight == 2
    writes.release.set()
    assert await asyncio.gather(*tasks) == [n * 10 for n in range(1, 11)]
    assert writes.most_in_flight == 2
    assert max(len(items) for items in writes.groups) == 3
    assert sorted(n for items in writes.groups for n in items) == list(range(1, 11))


async def test_a_refusal_answers_only_its_own_request() -> None:
    writes = Writes()
    writes.release.clear()
    group = GroupCommit(writes, writers=1)
    tasks = [asyncio.create_task(group.submit(n)) for n in (1, 2, -3, 4)]
    await asyncio.sleep(0)
    writes.release.set()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert answers[:2] == [10, 20] and answers[3] == 40
    assert isinstance(answers[2], ValueError) and answers[2].args == (-3,)


async def test_a_failed_write_fails_every_request_of_its_group_and_no_other() -> None:
    writes = Writes()
    writes.release.clear()
    group = GroupCommit(writes, writers=1)
    before = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    failing = [asyncio.create_task(group.submit(n)) for n in (0, -1, 2)]
    await asyncio.sleep(0)
    writes.release.set()
    assert await before == 10
    for task in failing:
        with pytest.raises(GroupWriteFailed, match="failed as a whole"):
            await task
    assert await asyncio.wait_for(group.submit(5), 1) == 50  # the writer is free again


async def test_a_cancelled_request_does_not_undo_or_block_the_others() -> None:
    writes = Writes()
    writes.release.clear()
    group = GroupCommit(writes, writers=1)
    kept = asyncio.create_task(group.submit(1))
    cancelled = asyncio.create_task(group.submit(2))
    await asyncio.sleep(0)
    cancelled.cancel()
    writes.release.set()
    assert await kept == 10
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert writes.groups == [[1, 2]]  # written all the same: cancelling a request undoes nothing
