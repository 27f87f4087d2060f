"""Live tests against a running cxcache + genesys-emulator (clients/run-tests.sh
starts both and exports CXCACHE_ADDR / CXCACHE_EMULATOR_URL)."""

import threading
import time
import uuid

import pytest

from cxcache import (
    CacheError,
    CacheClient,
    DeadlineExceededError,
    EventType,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    Source,
)

CACHED = {Source.L1, Source.STORE}


def test_list_queues(client):
    r = client.get("routing.queues")
    assert isinstance(r.value["entities"], list) and r.value["entities"]
    assert all(e.get("id") for e in r.value["entities"])
    assert r.key and r.source is not Source.UNSPECIFIED


def test_first_get_upstream_then_cached(client, emulator, queue_id):
    # Purged first, so the first Get is a miss even on a reused server.
    client.invalidate(tags=[f"queue:{queue_id}"], reason="python client test")
    before = emulator.queue_gets()
    first = client.get("routing.queue", id=queue_id)
    second = client.get("routing.queue", id=queue_id)
    assert emulator.queue_gets() - before == 1
    assert first.source is Source.UPSTREAM
    assert second.source in CACHED, second.source
    assert first.key == second.key and first.raw == second.raw
    assert first.value["id"] == queue_id
    assert second.ttl_remaining > 0 and second.age >= 0


def test_force_refresh_goes_upstream(client, emulator, queue_id):
    client.get("routing.queue", id=queue_id)
    before = emulator.queue_gets()
    r = client.get("routing.queue", id=queue_id, force_refresh=True)
    assert emulator.queue_gets() - before == 1
    assert r.source in {Source.UPSTREAM, Source.REVALIDATED}


def test_variant_summary(client, queue_id):
    full = client.get("routing.queue", id=queue_id)
    summary = client.get("routing.queue", id=queue_id, variant="summary")
    assert isinstance(summary.value, dict) and summary.value
    assert summary.key != full.key
    assert set(summary.value) <= set(full.value)


def test_unknown_kind_is_invalid_argument(client):
    with pytest.raises(InvalidArgumentError) as ei:
        client.get("no.such.kind")
    assert "kind" in [f for f, _ in ei.value.field_violations], ei.value.field_violations


def test_missing_id_is_invalid_argument(client):
    with pytest.raises(InvalidArgumentError) as ei:
        client.get("routing.queue")
    assert "id" in [f for f, _ in ei.value.field_violations], ei.value.field_violations


def test_unknown_queue_is_not_found(client):
    with pytest.raises(NotFoundError):
        client.get("routing.queue", id=str(uuid.uuid4()))


def test_upstream_429_is_resource_exhausted_with_retry_info(client, emulator):
    # The server waits out a Retry-After that ends inside the caller's deadline (and
    # retries), so make the upstream's Retry-After outlast this call's deadline.
    emulator.fault(path_prefix="/api/v2/routing/queues", status=429, retry_after_secs=3, count=1)
    try:
        with pytest.raises(ResourceExhaustedError) as ei:
            client.get("routing.queue", id=str(uuid.uuid4()), timeout=1)
        assert ei.value.retry_after is not None and 0 < ei.value.retry_after <= 10, ei.value
    finally:
        emulator.clear_faults()
    time.sleep(min(ei.value.retry_after or 0, 3) + 0.1)  # let the upstream token rest out


def test_upstream_latency_beyond_deadline(client, emulator):
    emulator.fault(path_prefix="/api/v2/routing/queues", latency_ms=1500, count=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.get("routing.queue", id=str(uuid.uuid4()), timeout=0.3)
        assert time.monotonic() - t0 < 1.2
    finally:
        emulator.clear_faults()
        time.sleep(1.5)  # let the slow upstream call finish so later counter checks are exact


def test_invalidate_key_then_refetched(client, queue_ids):
    qid = queue_ids[(3 + 0) % len(queue_ids)]
    key = client.get("routing.queue", id=qid).key
    assert client.get("routing.queue", id=qid).source in CACHED
    purged = client.invalidate(keys=[key], reason="python client test")
    assert purged >= 1
    assert client.get("routing.queue", id=qid).source is Source.UPSTREAM


def test_invalidate_by_tag(client, queue_ids):
    qid = queue_ids[(6 + 0) % len(queue_ids)]
    r = client.get("routing.queue", id=qid)
    assert r.tags, "routing.queue entries should carry tags"
    assert client.invalidate(tags=[r.tags[0]], reason="python tag test") >= 1
    assert client.get("routing.queue", id=qid).source is Source.UPSTREAM


def test_watch_key_receives_invalidated(client, queue_id):
    key = client.get("routing.queue", id=queue_id).key
    with client.watch(keys=[key], timeout=15) as stream:
        assert stream.wait_ready(10), "Watch did not start"
        got = []

        def consume():
            for ev in stream:
                got.append(ev)
                if ev.type is EventType.INVALIDATED:
                    return

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        assert client.invalidate(keys=[key], reason="python watch test") >= 1
        reader.join(10)
    inval = [e for e in got if e.type is EventType.INVALIDATED]
    assert inval, f"no INVALIDATED event, got {got}"
    ev = inval[0]
    assert ev.key == key
    assert ev.kind == "routing.queue"
    assert ev.reason == "python watch test"
    assert got[0].sequence >= 1  # (a hidden HEARTBEAT may come first)
    assert ev.time is not None


def test_upstream_4xx_message_is_exposed(client, emulator):
    # The server forwards the platform's error as google.rpc.ErrorInfo(domain
    # "cxcache.upstream", reason = the platform's code, metadata {status, message}).
    emulator.fault(path_prefix="/api/v2/routing/queues", status=400, count=1)
    try:
        with pytest.raises(CacheError) as ei:
            client.get("routing.queue", id=str(uuid.uuid4()))
    finally:
        emulator.clear_faults()
    e = ei.value
    assert e.attempts == 1  # a 4xx is not retried
    if e.error_info is None or e.error_info.domain != "cxcache.upstream":
        pytest.skip(f"this server does not send the upstream ErrorInfo yet ({e})")
    assert e.upstream_status == 400 and e.upstream_message, e
    assert e.upstream_message in str(e)


def test_wait_for_ready_and_trace_context(addr):
    # wait_for_ready on a live channel, and the traceparent header does not upset the server
    pytest.importorskip("opentelemetry")
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    ctx = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with CacheClient(addr, default_timeout=10, wait_for_ready=True) as c, trace.use_span(NonRecordingSpan(ctx)):
        assert c.get("routing.queues").source is not Source.UNSPECIFIED
