import asyncio, logging
import redis.asyncio as aioredis
import msgspec
from api.live.feed import Link
from . import test_live_instances as t
from .test_live_instances import *

async def dump(url, prefix, t0):
    c = aioredis.Redis.from_url(url)
    entries = await c.xrange(f"{prefix}:live")
    lease = await c.get(f"{prefix}:live:relay")
    await c.aclose()
    links = [msgspec.msgpack.decode(f[b"link"], type=Link) for _, f in entries]
    print(round(time.monotonic()-t0,2), "lease", lease, "entries", len(entries), "changes", [l.change.global_position for l in links if l.change], "prevs", [l.prev.global_position for l in links][-5:])

import traceback
from api.live import feed as feedmod
TB = []
def wrap(name):
    orig = getattr(feedmod.Feed, name)
    async def w(self, *a, **k):
        try:
            return await orig(self, *a, **k)
        except BaseException as e:
            TB.append((time.monotonic(), name, "".join(traceback.format_exception(e))[-3000:]))
            raise
    setattr(feedmod.Feed, name, w)

async def test_debug(database_url, redis_prefix, caplog, monkeypatch):
    for n in ["_consume", "_relay_when_leading"]:
        monkeypatch.setattr(feedmod.Feed, n, getattr(feedmod.Feed, n))
        wrap(n)
    caplog.set_level(logging.INFO, logger="api")
    t0 = time.monotonic()
    server = RedisProcess()
    server.start()
    try:
        env = instance_env(database_url, server.url, redis_prefix)
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(instance(env))
            b = await stack.enter_async_context(instance(env))
            await until_relayed_by_new_holder(server.url, redis_prefix)
            work = Workload(stack)
            readers = [await open_socket(stack, "admin@A", a, work.admin, Role.ADMIN)]
            burst = asyncio.create_task(work.run(30, [a, b], pause=0.05))
            await until(lambda: work.done >= 10, "the first commands of the burst")
            server.kill()
            print("killed", time.monotonic()-t0)
            await burst
            log = await read_log(database_url)
            await delivered(readers, log)
            assert_exactly_owed(readers, log)
            burst = asyncio.create_task(work.run(30, [a, b], pause=0.05))
            await until(lambda: work.done >= 40, "the first commands of the second burst")
            await asyncio.to_thread(server.start)
            print("started", time.monotonic()-t0)
            await burst
            print("burst done", time.monotonic()-t0)
            await dump(server.url, redis_prefix, t0)
            await until_relayed_by_new_holder(server.url, redis_prefix)
            await dump(server.url, redis_prefix, t0)
            await work.run(10, [a, b])
            print("last 10 done", time.monotonic()-t0)
            log = await read_log(database_url)
            await delivered(readers, log)
            assert_exactly_owed(readers, log)
            for k in range(10):
                await dump(server.url, redis_prefix, t0)
                await asyncio.sleep(0.5)
    finally:
        server.stop()
    for tt, n, tb in TB:
        print("=====", round(tt-t0,2), n); print(tb)
    for r in caplog.records:
        if r.name.startswith("api"):
            print(round(r.created - (time.time() - (time.monotonic()-t0)), 2), r.threadName, r.name, r.levelname, r.getMessage()[:300])
