#!/usr/bin/env python3
"""Renders loadtest/scaling.sh's measurements (one JSON object a line) as the
markdown result file, with a growth verdict per row computed from the numbers.

Verdict rule, for a cost measured at two sizes s1 < s2 (entries purged,
instances, subscribers, value bytes): r = (cost per unit at s2) / (cost per
unit at s1). r < 0.8: sub-linear (the total grows slower than the work);
0.8 <= r <= 1.25: linear; r > 1.25: worse than linear. The exponent e in
total ~ size^e is 1 + log(r) / log(s2 / s1).
"""

import argparse
import json
import math
import sys
from datetime import datetime, timezone

LOW, HIGH = 0.8, 1.25
# The layout's promise (issue 16): an entry costs at most this many Redis keys.
MAX_KEYS = 2


def verdict(unit_small, unit_large, s_small, s_large, exponent=True):
    if not unit_small or not unit_large or s_large <= s_small:
        return "n/a"
    r = unit_large / unit_small
    word = "sub-linear" if r < LOW else ("linear" if r <= HIGH else "worse than linear")
    if not exponent:
        return f"{word} (per-hit ratio {r:.2f})"
    e = 1 + math.log(r) / math.log(s_large / s_small)
    return f"{word} (per-unit ratio {r:.2f}, exponent {e:.2f})"


def fmt(v, digits=0):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:,.{digits}f}".replace(",", " ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    for name in ("mode", "commit", "profile", "bin", "cpus", "redis", "ghz"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--queues", type=int, required=True)
    ap.add_argument("--hit-secs", required=True)
    ap.add_argument("--watch-secs", required=True)
    ap.add_argument("--watch-rate", required=True)
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    by = lambda kind: [r for r in rows if r["row"] == kind]  # noqa: E731
    out = []
    p = out.append

    p(f"# cxcache scaling: how cost grows with the work — {a.mode}, {datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ}")
    p("")
    p(f"- commit `{a.commit}`, {a.profile} build (`{a.bin}`); {a.cpus}, shared by the load generators, "
      "the four cxcache instances, the emulator and the six Redis nodes (and, on this machine, other work)")
    p(f"- `loadtest/scaling.sh --{a.mode}`: the emulator (rate limit lifted, {a.queues} queues), a 3+3 Redis "
      f"{a.redis} cluster (`scripts/redis-cluster.sh`), four cxcache instances of one fleet (one namespace): "
      "`mem` (default configuration, L1 TTL raised to 600 s so its bytes can be read after the fill) and "
      "`h1`..`h3` (`CXCACHE_CACHE__L1__ENABLED=false`: every hit one Redis read). Log level: the default "
      "(`RUST_LOG` unset); cxcache's per-token upstream budget lifted like the emulator's")
    p(f"- load: ghz `{a.ghz}`; server CPU = the cxcache process(es)' CPU time, summed over their threads "
      "(`/proc/<pid>/task/*/schedstat`, ns; the Watch rows: `/proc/<pid>/stat`); Redis CPU = the same, summed "
      "over the six nodes (replication included)")
    p(f"- growth verdicts: r = cost per unit at the larger size ÷ at the smaller; r < {LOW}: sub-linear, "
      f"{LOW}–{HIGH}: linear, > {HIGH}: worse than linear; exponent e in total ∝ size^e is 1 + log r / log(size ratio)")
    p("")

    mem = by("memory")
    if mem:
        p("## 1. Memory per cached entry")
        p("")
        p(f"{a.queues} `routing.queue` entries (variant `full`) per value size: the emulator's queues padded "
          "with a `description` (`PATCH /admin/queues/{id}?silent=true`), fetched twice through `mem`, after the "
          "previous size's entries were purged (prefix and tags). Redis B/entry = (`MEMORY STATS` total.allocated − "
          "startup, client buffers, replication backlog and replica buffers, cluster links, script caches) delta "
          "summed over the masters ÷ entries. Keys/entry = the keys SCAN finds of "
          "the queues (entries `cx:{env:routing.queue:<id>}:full` and per-entity bookkeeping `cx:*{env:queue:<id>}*`) "
          "÷ entries, the raw `DBSIZE` delta beside (it also counts the shared kind index and short-lived purge "
          "acknowledgement sets). MEMORY USAGE (`SAMPLES 0`), averaged over 10 sample entities: the entry key, "
          "the entity's tag index if any (`cx:tag:{env:queue:<id>}`) and its share of the kind index "
          "(`cx:idx:{env:routing.queue}` ÷ members). L1 B/entry = `cxcache_l1_bytes` delta ÷ entries "
          "(the L1 weigher's figure: key + value + 128).")
        p("")
        p("| value | Redis B/entry (allocated) | overhead over the value | MEMORY USAGE: entry + tag index + kind share | Redis keys/entry (DBSIZE delta) | L1 B/entry | L1 overhead | keys of one sample entity |")
        p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        over_budget = False
        for r in mem:
            n = r["n"]
            per = r["used_memory_delta"] / n
            share = r["kind_mem"] / max(r["kind_card"], 1)
            mu = r["entry_mem"] + r["tag_mem"] + share
            keys = r["keys_delta"] / n
            l1 = r["l1_delta"] / n
            r["_per"], r["_l1"] = per, l1
            over_budget |= keys > MAX_KEYS + 0.01
            sample = ", ".join(f"`{k}`" for k in r["sample_keys"].split())
            p(f"| {fmt(r['value'])} B | {fmt(per)} | {fmt(per - r['value'])} B ({(per - r['value']) / r['value'] * 100:.1f} %) | "
              f"{fmt(r['entry_mem'])} + {fmt(r['tag_mem'])} + {fmt(share)} = {fmt(mu)} | {keys:.2f} (+{r['dbsize_delta']}) | {fmt(l1)} | "
              f"{fmt(l1 - r['value'])} B | {sample} |")
        p("")
        lo, hi = mem[0], mem[-1]
        dv = hi["value"] - lo["value"]

        def slope_of(key):
            return (hi[key] - lo[key]) / dv if dv > 0 else 0

        def word(slope):
            return "linear" if LOW <= slope <= HIGH else ("sub-linear" if slope < LOW else "worse than linear")

        for r in mem:
            r["_mu"] = r["entry_mem"] + r["tag_mem"] + r["kind_mem"] / max(r["kind_card"], 1)
        s_per, s_mu, s_l1 = slope_of("_per"), slope_of("_mu"), slope_of("_l1")
        p(f"Growth with the value size ({fmt(lo['value'])} → {fmt(hi['value'])} B, {hi['value'] / lo['value']:.0f}×): "
          f"Redis {s_per:.2f} B per value byte by allocation, {s_mu:.2f} by MEMORY USAGE — {word(s_per)}: "
          f"the value plus an overhead of {fmt(lo['_per'] - lo['value'])} B at {fmt(lo['value'])} B "
          f"({fmt(lo['_mu'] - lo['value'])} B by MEMORY USAGE: key name, entry header, the allocator's size class, "
          f"the kind index share), the allocator's size classes adding up to a quarter of a large value "
          f"({fmt(hi['_mu'] - hi['value'])} B at {fmt(hi['value'])} B); L1 {s_l1:.2f} B per value byte, {word(s_l1)} "
          f"(key + 128 B). Keys per entry: {max(r['keys_delta'] / r['n'] for r in mem):.2f} at most (budget: {MAX_KEYS}).")
        if over_budget:
            p("")
            p(f"KEYS-OVER-BUDGET: an entry costs more than {MAX_KEYS} Redis keys.")
        p("")

    pur = by("purge")
    if pur:
        p("## 2. Tag purge")
        p("")
        p("N `routing.queues` entries (each its own `name` filter), all tagged `queues`, filled through `h1`; "
          "then one `Invalidate {tags: [\"queues\"]}` on `h1`, timed by the caller (until every instance of the "
          "fleet acknowledged). CPU over the purge and 1 s after it (replicas applying the deletes, lazy frees), less "
          "the idle rate measured over 1 s just before; server CPU: `h1`; fleet CPU: the other three instances "
          "(their acks, L1 forgets). Run after the other sections (100 000 deletions leave Redis busy for a while).")
        p("")
        p("| keys | purged | time ms | µs/key | Redis CPU ms | Redis CPU µs/key | server CPU ms | server µs/key | fleet CPU ms | index left | growth vs the row above |")
        p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        prev = None
        for r in pur:
            n = r["n"]
            per = r["ms"] * 1000 / n
            rper = r["redis_cpu_ms"] * 1000 / n
            sper = r["server_cpu_ms"] * 1000 / n
            g = "—"
            if prev:
                g = (f"time {verdict(prev[1], per, prev[0], n)}; Redis CPU {verdict(prev[2], rper, prev[0], n)}; "
                     f"server CPU {verdict(prev[3], sper, prev[0], n)}")
            p(f"| {fmt(n)} | {fmt(r['purged'])} | {fmt(r['ms'])} | {fmt(per, 1)} | {fmt(r['redis_cpu_ms'])} | {fmt(rper, 1)} | "
              f"{fmt(r['server_cpu_ms'])} | {fmt(sper, 1)} | {fmt(r['fleet_cpu_ms'])} | {'yes' if r['index_left'] else 'no'} | {g} |")
            prev = (n, per, rper, sper)
        p("")

    hits = by("hits")
    if hits:
        p("## 3. CPU per hit with 1, 2 and 3 instances")
        p("")
        p(f"Redis hits (L1 off) of 50 queues' `summary` round-robin (spread over the three masters), {a.hit_secs} s, "
          f"one ghz per instance at the same time, each at {hits[0].get('rate', '?')} req/s (`--rps`, 16 concurrent calls, "
          "4 connections): k instances do k times the work, each under the same load, so a per-hit cost that "
          "stays flat is linear growth (what one instance costs the others: nothing on this path but the shared "
          "cluster, and the fleet's background renewals).")
        p("")
        p("Idle: the same instances and Redis with no load, just before (fleet renewals, the bus); net = the loaded "
          "window's CPU less the idle rate over it, per hit. The verdict is on the net figures.")
        p("")
        p("| instances | req/s (all) | server CPU µs/hit | idle server (cores) | net server µs/hit | Redis CPU µs/hit | net Redis µs/hit | growth vs 1 instance (net) |")
        p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        first = hits[0]
        for r in hits:
            g = "—" if r is first else (
                f"server {verdict(first['net_server_us'], r['net_server_us'], first['instances'], r['instances'], False)}; "
                f"Redis {verdict(first['net_redis_us'], r['net_redis_us'], first['instances'], r['instances'], False)}")
            p(f"| {r['instances']} | {fmt(r['rps'])} | {fmt(r['server_us'], 1)} | {r['idle_server_cores']:.3f} | "
              f"{fmt(r['net_server_us'], 1)} | {fmt(r['redis_us'], 1)} | {fmt(r['net_redis_us'], 1)} | {g} |")
        p("")

    w = by("watch")
    if w:
        p("## 4. Watch fan-out")
        p("")
        p(f"N Watch streams on `h1` (kind `routing.queue`, `invalidated_only`; 100 streams per HTTP/2 connection), "
          f"held by `loadtest/scaling` (`cxcache-scaling watch`); one key purged through `h2` every "
          f"{1 / float(a.watch_rate) * 1000:.0f} ms for {a.watch_secs} s, so each purge reaches `h1` over the bus and "
          "fans out to every stream. Server CPU of `h1` over that window; idle = the same streams for the same time "
          "with no purges, just before. events/s per core = events delivered ÷ server CPU seconds.")
        p("")
        p("| subscribers | purges/s | events/s delivered | server CPU (cores) | idle (cores) | events/s per core | net CPU µs/event | received / expected | growth vs the row above |")
        p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        prev = None
        for r in w:
            cpe = 1 / r["events_per_s_per_core"] * 1e6 if r["events_per_s_per_core"] else None
            g = "—"
            if prev and cpe:
                g = (f"CPU per event {verdict(prev[1], cpe, prev[0], r['subs'])}")
            p(f"| {fmt(r['subs'])} | {r['purges'] / r['window_s']:.1f} | {fmt(r['events_per_s'])} | "
              f"{r['busy_cpu_s'] / r['window_s']:.3f} | {r['idle_cpu_s'] / float(a.watch_secs):.3f} | "
              f"{fmt(r['events_per_s_per_core'])} | {fmt(r['net_cpu_us_per_event'], 2)} | {r['received']} / {r['expected']} | {g} |")
            prev = (r["subs"], cpe)
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
