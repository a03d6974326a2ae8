"""The one rule of what a live client already has: after a position, or as of a snapshot."""

from __future__ import annotations

from eventstore import LogPosition, LogSnapshot
from live import Change, Owed


def change(tx_id: int, global_position: int) -> Change:
    return Change(tx_id, global_position, "NotesChanged", "p", "ann", "{}", b"{}")


def test_a_resumed_client_is_owed_only_what_lies_after_its_position() -> None:
    owed = Owed.after(LogPosition(10, 100))
    sent = [c.global_position for c in map(change, (9, 10, 11, 12), (99, 100, 101, 102)) if owed(c)]
    assert sent == [101, 102]


def test_a_client_given_a_snapshot_is_owed_the_transactions_it_did_not_see() -> None:
    # The snapshot saw every transaction below 20 except 15 and 17, which were still running.
    snapshot = LogSnapshot(LogPosition(14, 140), xmin=15, xmax=20, running=frozenset({15, 17}))
    owed = Owed.beyond(snapshot)
    arriving = [change(16, 160), change(15, 150), change(17, 170), change(21, 210), change(18, 180)]
    # 18 comes after a change past the snapshot: in log order it cannot have been seen either.
    assert [c.tx_id for c in arriving if owed(c)] == [15, 17, 21, 18]


def test_a_snapshot_with_nothing_running_owes_only_later_transactions() -> None:
    owed = Owed.beyond(LogSnapshot(LogPosition(14, 140), xmin=20, xmax=20, running=frozenset()))
    assert [owed(change(t, t * 10)) for t in (19, 20, 21)] == [False, True, True]
