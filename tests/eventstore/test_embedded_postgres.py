"""The store's guarantees again, on the embedded PostgreSQL (18) that development runs use.

The rest of the suite runs on the machine's server (15 in CI); these cover the other end of the
supported range with the same test functions.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from tests.conftest import drop_template, embedded_server, make_template

from .test_append import (  # noqa: F401  (collected again here, against this module's server)
    test_concurrent_twins_of_one_append_store_it_once,
    test_decimals_and_metadata_survive_the_round_trip_exactly,
    test_multi_stream_append_with_one_conflict_writes_nothing,
    test_retried_append_with_same_event_ids_stores_nothing_twice,
    test_twenty_concurrent_appends_at_one_version_one_wins,
)
from .test_immutability import test_events_cannot_be_updated_deleted_or_truncated  # noqa: F401
from .test_log import test_an_open_append_blocks_no_writer_and_no_reader_skips_it  # noqa: F401
from .test_subscription import (  # noqa: F401
    test_appends_in_another_process_wake_a_subscriber_without_polling,
    test_subscription_catches_up_then_follows_live,
)

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with embedded_server() as url:
        yield url


@pytest.fixture(scope="module")
def template_database(pg_server: str) -> Iterator[str]:
    name = make_template(pg_server)
    yield name
    drop_template(pg_server, name)


async def test_the_embedded_server_is_a_newer_major_version(pool: asyncpg.Pool) -> None:
    assert await pool.fetchval("SELECT current_setting('server_version_num')::int") >= 180000
