"""A FastAPI + redis.asyncio cache-aside service for Genesys Cloud data actions,
written the way the platform's data-action guides describe one: the peer that
loadtest/peers.sh measures cxcache's HTTP door against.

POST /data-action with the door's body shape ({"kind", "id", "variant"?,
"params"?}) answers the platform's JSON for that resource:

- key: SHA-256 of the inputs serialized with sorted keys;
- hit: GET from Redis, returned as is;
- miss: GET upstream with httpx.AsyncClient and one client-credentials token
  (fetched at startup, fetched again once on a 401), then SETEX 300 s.

No coalescing: concurrent misses of one key each call the upstream (that is
what the guides' cache-aside does, and what the stampede row measures).

Environment: UPSTREAM_URL, CLIENT_ID, CLIENT_SECRET, REDIS_URL
(redis://host:port; REDIS_CLUSTER=1 uses redis.asyncio.RedisCluster on it),
REDIS_MAX_CONNECTIONS (100 per worker, waited for when all are busy),
CACHE_TTL (300). Run: uvicorn app:app --workers 2.
"""

import hashlib
import json
import os
from contextlib import asynccontextmanager
from typing import Dict, Optional

import httpx
import redis.asyncio as redis
from redis.maint_notifications import MaintNotificationsConfig
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8089")
CLIENT_ID = os.environ.get("CLIENT_ID", "cxcache-demo")
CLIENT_SECRET = os.environ.get("CLIENT_SECRET", "demo-secret")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
REDIS_CLUSTER = os.environ.get("REDIS_CLUSTER", "") == "1"
CACHE_TTL = int(os.environ.get("CACHE_TTL", "300"))
REDIS_MAX_CONNECTIONS = int(os.environ.get("REDIS_MAX_CONNECTIONS", "100"))

# Resource kinds this service knows, as the upstream paths they read.
PATHS = {
    "routing.queue": "/api/v2/routing/queues/{id}",
    "routing.skill": "/api/v2/routing/skills/{id}",
    "user": "/api/v2/users/{id}",
}


class DataActionInput(BaseModel):
    kind: str
    id: str = ""
    variant: str = ""
    params: Dict[str, str] = {}


class State:
    http: httpx.AsyncClient
    store: "redis.Redis"
    token: Optional[str] = None


state = State()


async def fetch_token() -> str:
    resp = await state.http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    resp.raise_for_status()
    return resp.json()["access_token"]


@asynccontextmanager
async def lifespan(_app: FastAPI):
    state.http = httpx.AsyncClient(base_url=UPSTREAM_URL, timeout=10.0)
    if REDIS_CLUSTER:
        # Its per-node pool has no blocking mode: past max_connections it
        # raises MaxConnectionsError, so it gets room for every caller.
        # Maintenance notifications are a Redis Enterprise/Cloud feature that
        # redis-py 8 tries on every new RESP3 cluster connection ("auto"); open
        # source redis-server refuses the handshake, and a connection dropped
        # during it fails the request with AttributeError ('NoneType' has no
        # 'writelines'), 54 errors in one CI run. A user of an open source
        # cluster turns it off.
        state.store = redis.RedisCluster.from_url(
            REDIS_URL,
            max_connections=10 * REDIS_MAX_CONNECTIONS,
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
    else:
        # A blocking pool: redis-py's default pool (100 connections per
        # process) raises "Too many connections" past that instead of waiting,
        # which a 200-request burst on 2 workers reaches.
        pool = redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=REDIS_MAX_CONNECTIONS, timeout=10)
        state.store = redis.Redis(connection_pool=pool)
    state.token = await fetch_token()
    yield
    await state.http.aclose()
    await state.store.aclose()


app = FastAPI(lifespan=lifespan)


def cache_key(inputs: DataActionInput) -> str:
    canonical = json.dumps(inputs.model_dump(), sort_keys=True, separators=(",", ":"))
    return "da:" + hashlib.sha256(canonical.encode()).hexdigest()


@app.get("/healthz")
async def healthz():
    return {"status": "ok"}


@app.post("/data-action")
async def data_action(inputs: DataActionInput):
    template = PATHS.get(inputs.kind)
    if template is None or not inputs.id:
        raise HTTPException(status_code=400, detail=f"unknown kind or missing id: {inputs.kind!r}")
    key = cache_key(inputs)
    cached = await state.store.get(key)
    if cached is not None:
        return Response(content=cached, media_type="application/json", headers={"x-cache": "HIT"})
    path = template.format(id=inputs.id)
    resp = await state.http.get(path, params=inputs.params or None, headers={"Authorization": f"Bearer {state.token}"})
    if resp.status_code == 401:
        state.token = await fetch_token()
        resp = await state.http.get(
            path, params=inputs.params or None, headers={"Authorization": f"Bearer {state.token}"}
        )
    if resp.status_code != 200:
        raise HTTPException(status_code=resp.status_code, detail=resp.text[:500])
    await state.store.setex(key, CACHE_TTL, resp.content)
    return Response(content=resp.content, media_type="application/json", headers={"x-cache": "MISS"})
