"""Near cache benchmark for the Python client: Gets/s and latency per Get of one key,
served by the near cache (near_cache=NearCache()) vs by the server's L1 (the same client
without a near cache), one after the other in one run, one thread each.

    CXCACHE_ADDR=127.0.0.1:50051 clients/python/.venv/bin/python loadtest/near-python.py [seconds]

Prints one line per mode and the ratio; exits 1 if the near run was not all NEAR hits.
"""

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python" / "src"))

from cxcache import CacheClient, NearCache, Source  # noqa: E402


def run(client, kind, qid, seconds):
    lat = []
    sources = {}
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        r = client.get(kind, id=qid)
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        sources[r.source] = sources.get(r.source, 0) + 1
        if t1 >= end:
            break
    lat.sort()
    total = sum(lat)
    return {
        "gets": len(lat),
        "per_s": len(lat) / total,
        "mean_us": total / len(lat) * 1e6,
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
        "sources": {str(k): v for k, v in sources.items()},
    }


def main():
    addr = os.environ.get("CXCACHE_ADDR", "127.0.0.1:50051")
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    with CacheClient(addr, default_timeout=10) as plain:
        qid = plain.get("routing.queues").value["entities"][0]["id"]
        plain.get("routing.queue", id=qid)
        plain.get("routing.queue", id=qid)  # in the server's L1 now
        l1 = run(plain, "routing.queue", qid, seconds)
    with CacheClient(addr, default_timeout=10, near_cache=NearCache()) as near:
        near.get("routing.queue", id=qid)  # fill
        n = run(near, "routing.queue", qid, seconds)
        stats = near.near_stats()
    print(f"python {sys.version.split()[0]}, {seconds:g} s per mode, one thread, key routing.queue/{qid}")
    for name, r in (("server L1", l1), ("near hit ", n)):
        print(f"  {name}: {r['per_s']:>10.0f} Gets/s  mean {r['mean_us']:8.1f} us  p50 {r['p50_us']:8.1f} us  "
              f"p99 {r['p99_us']:8.1f} us  ({r['gets']} Gets, sources {r['sources']})")
    print(f"  ratio near/L1: {n['per_s'] / l1['per_s']:.0f}x Gets/s, "
          f"{statistics.mean([l1['mean_us']]) / n['mean_us']:.0f}x mean latency")
    print(f"  near stats: {stats}")
    ok = n["sources"].get(str(Source.NEAR), 0) == n["gets"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
