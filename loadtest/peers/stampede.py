"""Cold stampede: N identical requests sent at the same instant.

    python3 stampede.py HOST:PORT PATH BODY [N]

Opens N connections first, then writes the same POST on all of them at once
and reads every answer (Connection: close). Prints one JSON line: requests,
ok (HTTP 200), errors (anything else, by status or exception), p50/p99/max
latency in ms (from the write). Standard library only.
"""

import asyncio
import json
import sys
import time

TIMEOUT_S = 30.0


async def one(host, port, request, go, results, ready):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - every failure is an error row
        results.append((None, f"connect: {type(e).__name__}", 0.0))
        ready[0] += 1
        return
    ready[0] += 1
    await go.wait()
    t0 = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), TIMEOUT_S)
        elapsed = (time.perf_counter() - t0) * 1000
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        head, _, body = data.partition(b"\r\n\r\n")
        if status == 200 and not body:
            results.append((status, "empty body", elapsed))
        else:
            results.append((status, None if status == 200 else f"HTTP {status}", elapsed))
    except Exception as e:  # noqa: BLE001
        results.append((None, f"{type(e).__name__}", (time.perf_counter() - t0) * 1000))
    finally:
        writer.close()


def pct(sorted_ms, p):
    if not sorted_ms:
        return 0.0
    i = min(len(sorted_ms) - 1, max(0, int(round(p / 100 * len(sorted_ms) + 0.5)) - 1))
    return round(sorted_ms[i], 2)


async def main():
    addr, path, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    host, port = addr.rsplit(":", 1)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    go = asyncio.Event()
    results = []
    ready = [0]
    tasks = [asyncio.create_task(one(host, int(port), request, go, results, ready)) for _ in range(n)]
    # Every connection is established (or has failed) before the requests go out.
    deadline = time.monotonic() + TIMEOUT_S
    while ready[0] < n and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    go.set()
    await asyncio.gather(*tasks)
    errors = {}
    for status, err, _ in results:
        if err:
            errors[err] = errors.get(err, 0) + 1
    lat = sorted(ms for status, err, ms in results if err is None)
    print(
        json.dumps(
            {
                "requests": n,
                "ok": len(lat),
                "errors": sum(errors.values()),
                "error_kinds": errors,
                "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99),
                "max_ms": round(lat[-1], 2) if lat else 0.0,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
