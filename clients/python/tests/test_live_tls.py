"""Live tests against the secure instances of scripts/live-server.sh --secure (TLS with
bearer API keys, and mutual TLS). Skipped only without CXCACHE_ADDR; with it, the
secure variables must be there too (clients/run-tests.sh starts those instances)."""

import os
import threading

import pytest

from cxcache import (
    TLS,
    AsyncCacheClient,
    CacheClient,
    EventType,
    PermissionDeniedError,
    Source,
    UnauthenticatedError,
    UnavailableError,
)

NEEDED = (
    "CXCACHE_TLS_ADDR",
    "CXCACHE_MTLS_ADDR",
    "CXCACHE_TLS_CA",
    "CXCACHE_TLS_CLIENT_CERT",
    "CXCACHE_TLS_CLIENT_KEY",
    "CXCACHE_API_KEY",
    "CXCACHE_ROUTING_KEY",
)


@pytest.fixture(scope="module")
def sec(addr):
    missing = [n for n in NEEDED if not os.environ.get(n)]
    assert not missing, f"CXCACHE_ADDR is set but not {missing}: start the server with live-server.sh --secure"
    return {n: os.environ[n] for n in NEEDED}


def test_tls_with_api_key_get_invalidate_watch(sec, queue_ids):
    qid = queue_ids[12 % len(queue_ids)]
    with CacheClient(
        sec["CXCACHE_TLS_ADDR"], tls=TLS(ca=sec["CXCACHE_TLS_CA"]), api_key=sec["CXCACHE_API_KEY"], default_timeout=10
    ) as c:
        r = c.get("routing.queue", id=qid)
        assert r.value["id"] == qid and r.source is not Source.UNSPECIFIED
        with c.watch(keys=[r.key], timeout=15) as stream:
            assert stream.wait_ready(10), "Watch over TLS did not start"
            got = []

            def consume():
                for ev in stream:
                    got.append(ev)
                    if ev.type is EventType.INVALIDATED:
                        return

            reader = threading.Thread(target=consume, daemon=True)
            reader.start()
            assert c.invalidate(keys=[r.key], reason="python tls test") >= 1
            reader.join(10)
        assert [e.key for e in got if e.type is EventType.INVALIDATED] == [r.key], got


async def test_async_tls_with_api_key(sec):
    async with AsyncCacheClient(
        sec["CXCACHE_TLS_ADDR"], tls=TLS(ca=sec["CXCACHE_TLS_CA"]), api_key=sec["CXCACHE_API_KEY"], default_timeout=10
    ) as c:
        assert (await c.get("routing.queues")).value["entities"]


def test_no_key_is_unauthenticated(sec):
    with CacheClient(sec["CXCACHE_TLS_ADDR"], tls=TLS(ca=sec["CXCACHE_TLS_CA"]), default_timeout=10) as c:
        with pytest.raises(UnauthenticatedError):
            c.get("routing.queues")
        with pytest.raises(UnauthenticatedError):
            c.invalidate(keys=["dev:routing.queue:x"])


def test_routing_key_scopes_are_permission_denied(sec):
    with CacheClient(
        sec["CXCACHE_TLS_ADDR"], tls=TLS(ca=sec["CXCACHE_TLS_CA"]), api_key=sec["CXCACHE_ROUTING_KEY"], default_timeout=10
    ) as c:
        assert c.get("routing.queues").value["entities"]  # in scope
        with pytest.raises(PermissionDeniedError) as ei:
            c.get("user", id="00000000-0000-0000-0000-000000000000")
        assert "scope get" in ei.value.message and "user" in ei.value.message, ei.value
        with pytest.raises(PermissionDeniedError) as ei:
            c.invalidate(prefixes=["dev:user"])
        assert "invalidate_prefixes" in ei.value.message and "dev:user" in ei.value.message, ei.value


def test_mtls_with_client_certificate_and_without(sec):
    tls = TLS(ca=sec["CXCACHE_TLS_CA"], cert=sec["CXCACHE_TLS_CLIENT_CERT"], key=sec["CXCACHE_TLS_CLIENT_KEY"])
    with CacheClient(sec["CXCACHE_MTLS_ADDR"], tls=tls, default_timeout=10) as c:  # no API key
        assert c.get("routing.queues").value["entities"]
        with c.watch(prefixes=["dev:routing.queue:"], timeout=10) as stream:
            assert stream.wait_ready(10)
    with CacheClient(sec["CXCACHE_MTLS_ADDR"], tls=TLS(ca=sec["CXCACHE_TLS_CA"]), default_timeout=10, retry=False) as c:
        with pytest.raises((UnavailableError, UnauthenticatedError)) as ei:
            c.get("routing.queues")
    assert "TLS" in str(ei.value) or ei.value.code.name == "UNAUTHENTICATED", ei.value


def test_plaintext_client_against_the_tls_port_fails_clearly(sec):
    with CacheClient(sec["CXCACHE_TLS_ADDR"], api_key=sec["CXCACHE_API_KEY"], default_timeout=10, retry=False) as c:
        with pytest.raises(UnavailableError) as ei:
            c.get("routing.queues")
    assert "without TLS" in str(ei.value) and "tls=TLS" in str(ei.value), ei.value
