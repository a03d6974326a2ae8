"""The hub's bounded queues: a subscriber that falls too far behind is dropped, never buffered."""

from __future__ import annotations

from api.routes.websocket import _CLOSE_CODES
from eventstore import START
from live import Change, Hub, Revoked, Subscriber, TooSlow


def _change(n: int, owner: str | None = "ann") -> Change:
    return Change(n, n, "NotesChanged", "p", owner, "{}", b"{}")


async def test_a_subscriber_beyond_its_limit_is_failed_and_its_queue_freed() -> None:
    freed = []
    subscriber = Subscriber("ann", lambda change: True, limit=2, joined_at=START)
    subscriber.on_failure = lambda: freed.append(True)
    for n in range(1, 4):
        subscriber.offer(_change(n))

    assert isinstance(subscriber.failure, TooSlow) and subscriber.take() is None
    assert freed == [True]
    assert not subscriber._queue  # the memory goes at once, not when the socket closes
    assert _CLOSE_CODES[TooSlow][0] == 4408


async def test_a_subscriber_gets_its_owners_changes_and_everyones_prices_in_order() -> None:
    subscriber = Subscriber("ann", lambda change: True, limit=10, joined_at=START)
    for change in (_change(1), _change(2, "bob"), _change(3, None), _change(4)):
        subscriber.offer(change)

    assert [subscriber.take().global_position for _ in range(3)] == [1, 3, 4]
    assert subscriber.take() is None


async def test_revoking_a_token_fails_its_subscribers_only_and_forgets_them() -> None:
    hub = Hub(queue_limit=10)
    everything = lambda change: True  # noqa: E731
    first, second = (hub.subscribe("ann", everything, token_id="t1") for _ in range(2))
    other_token = hub.subscribe("ann", everything, token_id="t2")
    no_token = hub.subscribe(None, everything)

    hub.revoke({"t1", "never-used"})
    hub.unsubscribe(first)
    hub.unsubscribe(second)

    assert all(isinstance(revoked.failure, Revoked) for revoked in (first, second))
    assert other_token.failure is None and no_token.failure is None
    hub.publish(_change(1))
    assert other_token.take().global_position == 1
    assert first.take() is None
    hub.unsubscribe(other_token)
    hub.unsubscribe(no_token)
    assert not hub.has_subscribers and not hub._by_token
