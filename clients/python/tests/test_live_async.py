"""The asyncio client against the live server."""

import asyncio
import uuid

import pytest

from cxcache import AsyncCacheClient, DeadlineExceededError, EventType, InvalidArgumentError, NotFoundError, Source


@pytest.fixture()
async def aclient(addr):
    async with AsyncCacheClient(addr, default_timeout=10) as c:
        yield c


async def test_async_get_and_cache(aclient, queue_id):
    first = await aclient.get("routing.queue", id=queue_id, variant="summary")
    second = await aclient.get("routing.queue", id=queue_id, variant="summary")
    assert second.source in {Source.L1, Source.STORE}
    assert first.key == second.key and first.value == second.value


async def test_async_concurrent_gets_share_one_value(aclient, queue_ids):
    qid = queue_ids[(9 + 0) % len(queue_ids)]
    results = await asyncio.gather(*(aclient.get("routing.queue", id=qid) for _ in range(8)))
    assert len({r.raw for r in results}) == 1
    assert len({r.key for r in results}) == 1


async def test_async_errors(aclient, emulator):
    with pytest.raises(InvalidArgumentError) as ei:
        await aclient.get("no.such.kind")
    assert "kind" in [f for f, _ in ei.value.field_violations]
    with pytest.raises(NotFoundError):
        await aclient.get("routing.queue", id=str(uuid.uuid4()))
    emulator.fault(path_prefix="/api/v2/routing/queues", latency_ms=1500, count=1)
    try:
        with pytest.raises(DeadlineExceededError):
            await aclient.get("routing.queue", id=str(uuid.uuid4()), timeout=0.3)
    finally:
        emulator.clear_faults()
        await asyncio.sleep(1.5)  # let the slow upstream call finish


async def test_async_watch_by_kind(aclient, queue_id):
    key = (await aclient.get("routing.queue", id=queue_id)).key
    stream = aclient.watch(kinds=["routing.queue"], timeout=15)
    try:
        assert await stream.wait_ready(10), "Watch did not start"
        assert await aclient.invalidate(keys=[key], reason="python async watch") >= 1

        async def first_invalidated():
            async for ev in stream:
                if ev.type is EventType.INVALIDATED and ev.key == key:
                    return ev

        ev = await asyncio.wait_for(first_invalidated(), 10)
        assert ev is not None and ev.kind == "routing.queue" and ev.reason == "python async watch"
    finally:
        stream.cancel()
