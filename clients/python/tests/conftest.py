import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

# Make sure the generated stubs exist before anything imports cxcache.
_HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_HERE))
import build_protos  # noqa: E402

build_protos.generate()
sys.path.insert(0, str(_HERE / "src"))

# Each client suite uses its own queue from the emulator's list so that
# "first Get is UPSTREAM" holds when the suites share one server.
SUITE_QUEUE_INDEX = 0


class Emulator:
    """The genesys-emulator admin API (faults, counters)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def fault(self, **fault) -> None:
        self._call("POST", "/admin/faults", fault)

    def clear_faults(self) -> None:
        self._call("DELETE", "/admin/faults")

    def counters(self) -> dict:
        return self._call("GET", "/admin/counters")

    def queue_gets(self) -> int:
        """Upstream GETs of single queues (route GET /api/v2/routing/queues/{id})."""
        by_route = self.counters().get("by_route", {})
        return sum(n for r, n in by_route.items() if r.startswith("GET /api/v2/routing/queues/"))


@pytest.fixture(scope="session")
def addr() -> str:
    value = os.environ.get("CXCACHE_ADDR")
    if not value:
        pytest.skip("live tests need CXCACHE_ADDR (clients/run-tests.sh starts a server)")
    return value


@pytest.fixture(scope="session")
def emulator() -> Emulator:
    url = os.environ.get("CXCACHE_EMULATOR_URL")
    if not url:
        pytest.skip("live tests need CXCACHE_EMULATOR_URL (clients/run-tests.sh starts one)")
    emu = Emulator(url)
    emu.clear_faults()
    return emu


@pytest.fixture()
def client(addr):
    from cxcache import CacheClient

    with CacheClient(addr, default_timeout=10) as c:
        yield c


@pytest.fixture(scope="session")
def queue_ids(addr):
    from cxcache import CacheClient

    with CacheClient(addr, default_timeout=10) as c:
        listing = c.get("routing.queues")
    ids = [e["id"] for e in listing.value["entities"]]
    assert ids, "routing.queues returned no entities"
    return ids


@pytest.fixture(scope="session")
def queue_id(queue_ids) -> str:
    return queue_ids[SUITE_QUEUE_INDEX % len(queue_ids)]
