"""Live tests of the near cache against a real cxcache + emulator: hits, purges by
another client applied within the Watch delay, a server killed and restarted, a
stream resumed after a cut (through an in-process TCP proxy), and a racing checker
(hold, Get in flight, PATCH + Invalidate from another process, release)."""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cxcache import CacheClient, CacheError, NearCache, Source
from cxcache.v1 import cache_pb2

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 500)]
T = cache_pb2.WatchEvent


class Events:
    """Records the near cache's Watch messages; waits (bounded) for one."""

    def __init__(self, client):
        self.msgs = []
        self.cv = threading.Condition()
        client.near_cache.add_listener(self._on)

    def _on(self, m):
        with self.cv:
            self.msgs.append((time.monotonic(), m))
            self.cv.notify_all()

    def wait_for(self, pred, timeout=10.0, after=0):
        """The first message past index ``after`` satisfying ``pred`` (time, msg)."""
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for t, m in self.msgs[after:]:
                    if pred(m):
                        return t, m
                left = end - time.monotonic()
                assert left > 0, f"no such Watch message within {timeout}s; got {[m.type for _, m in self.msgs]}"
                self.cv.wait(left)


def near_client(addr, **kw):
    cfg = NearCache(**{"max_staleness": 1.0, **kw})
    return CacheClient(addr, default_timeout=10, near_cache=cfg, options=FAST_RECONNECT)


def require_heartbeats(c):
    assert c.near_stats().heartbeats > 0 and c.near_cache.last_heard is not None, (
        "the server sent no HEARTBEAT on the near cache's Watch: it predates Watch resume"
    )


def test_near_hit_after_the_first_get(addr, emulator, queue_ids):
    qid = queue_ids[15 % len(queue_ids)]
    with CacheClient(addr, default_timeout=10) as plain:
        plain.get("routing.queue", id=qid)  # warm the server
    with near_client(addr) as c:
        first = c.get("routing.queue", id=qid)
        require_heartbeats(c)
        before = emulator.queue_gets()
        hits = [c.get("routing.queue", id=qid) for _ in range(100)]
        assert all(h.source is Source.NEAR for h in hits), {h.source for h in hits}
        assert hits[0].raw == first.raw and hits[0].key == first.key
        assert emulator.queue_gets() == before
        s = c.near_stats()
        assert s.hits == 100 and s.fills == 1 and s.entries == 1


@pytest.mark.parametrize("invalidated_only", [False, True], ids=["all-events", "invalidated-only"])
def test_purge_by_another_client_is_applied_within_the_watch_delay(addr, queue_ids, invalidated_only):
    qid = queue_ids[(16 + invalidated_only) % len(queue_ids)]
    with near_client(addr, invalidated_only=invalidated_only) as c, CacheClient(addr, default_timeout=10) as other:
        other.get("routing.queue", id=qid)
        key = c.get("routing.queue", id=qid).key
        assert c.get("routing.queue", id=qid).source is Source.NEAR
        ev = Events(c)
        delays, sends = [], []
        for _ in range(10):
            n = len(ev.msgs)
            sent = time.monotonic()
            other.invalidate(keys=[key], reason="near purge test")
            acked = time.monotonic()
            t, _ = ev.wait_for(lambda m: m.type == T.TYPE_INVALIDATED and m.key == key, after=n)  # noqa: B023
            delays.append(t - acked)
            sends.append(t - sent)
            n = len(ev.msgs)
            refetched = c.get("routing.queue", id=qid)
            assert refetched.source is Source.UPSTREAM, refetched.source
            if not invalidated_only:
                # The refetch stored a value: the server announces it as UPDATED, which
                # (in flight or after) voids that fill. The next Get (a STORE hit) fills.
                ev.wait_for(lambda m: m.type == T.TYPE_UPDATED and m.key == key, after=n)  # noqa: B023
                assert c.get("routing.queue", id=qid).source is Source.STORE
            assert c.get("routing.queue", id=qid).source is Source.NEAR  # refilled
        print(f"\nnear ({'invalidated-only' if invalidated_only else 'all events'}): purge by another client -> "
              f"INVALIDATED received {max(delays) * 1e3:.2f} ms at worst after Invalidate returned "
              f"(median {sorted(delays)[len(delays) // 2] * 1e3:.2f} ms; {max(sends) * 1e3:.2f} ms at worst "
              f"after it was sent)")
        assert max(delays) < 1.0


# ---------------------------------------------------------------- own server processes


def bin_dir():
    return Path(os.environ.get("CXCACHE_BIN_DIR") or REPO / "target" / "debug")


def spawn(args, pattern, log):
    f = open(log, "w+")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        f.seek(0)
        m = re.search(pattern, f.read())
        if m:
            return p, m
        assert p.poll() is None, f"{args[0]} exited: {Path(log).read_text()[-2000:]}"
        time.sleep(0.05)
    p.kill()
    raise AssertionError(f"{args[0]} did not start: {Path(log).read_text()[-2000:]}")


class Pair:
    """An emulator and a cxcache of our own (port 0, loopback), so they can be killed."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.emu, m = spawn([str(bin_dir() / "genesys-emulator"), "--addr", "127.0.0.1:0"],
                            r"genesys-emulator listening on (http://\S+)", tmp / "emu.log")
        self.emu_url = m.group(1)
        self.start("127.0.0.1:0")

    def start(self, grpc_addr):
        self.cx, m = spawn([str(bin_dir() / "cxcache"), "--grpc-addr", grpc_addr, "--http-addr", "127.0.0.1:0",
                            "--upstream-url", self.emu_url, "--client-id", "cxcache-demo",
                            "--client-secret", "demo-secret"], r"cxcache listening grpc=(\S+)", self.tmp / "cx.log")
        self.addr = m.group(1)

    def kill(self):
        self.cx.send_signal(signal.SIGKILL)
        self.cx.wait(10)

    def stop(self):
        for p in (self.cx, self.emu):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


@pytest.fixture()
def pair(addr, tmp_path):
    p = Pair(tmp_path)
    yield p
    p.stop()


def first_queue(addr):
    with CacheClient(addr, default_timeout=10) as c:
        return c.get("routing.queues").value["entities"][0]["id"]


def test_server_killed_and_restarted_flushes_and_stops_near_hits(pair):
    max_staleness = 0.5
    qid = first_queue(pair.addr)
    with near_client(pair.addr, max_staleness=max_staleness) as c:
        c.get("routing.queue", id=qid)
        c.get("routing.queue", id=qid)
        require_heartbeats(c)
        assert c.get("routing.queue", id=qid).source is Source.NEAR
        ev = Events(c)
        pair.kill()
        killed = time.monotonic()
        last_near, errors, end = None, 0, killed + max_staleness + 1.5
        while time.monotonic() < end:  # bounded: past max_staleness no hit may come
            # The near cache decides after this moment: the guarantee bounds
            # it (a clock read after the Get would add the Get's own time).
            asked = time.monotonic()
            try:
                r = c.get("routing.queue", id=qid, retry=False, timeout=0.2)
                if r.source is Source.NEAR:
                    last_near = asked
            except CacheError:
                errors += 1
        heard = c.near_cache.last_heard
        assert heard is not None
        if last_near is None:  # the host stalled this process past max_staleness right after the kill
            print(f"\nnear: server SIGKILLed; no near hit after the kill ({errors} Gets failed while it was down)")
        else:
            print(
                f"\nnear: server SIGKILLed; last near hit {(last_near - killed) * 1e3:.0f} ms after the kill, "
                f"{(last_near - heard) * 1e3:.0f} ms after the last Watch message (max_staleness "
                f"{max_staleness * 1e3:.0f} ms); {errors} Gets failed while it was down"
            )
            assert last_near - heard < max_staleness  # the guarantee (heard precedes or follows the kill)
            assert last_near - max(heard, killed) < max_staleness
        flushes = c.near_stats().flushes
        n = len(ev.msgs)
        pair.start(pair.addr)  # the same port: the client's channel reconnects to it
        ev.wait_for(lambda m: m.type in (T.TYPE_RESET, T.TYPE_HEARTBEAT), timeout=15, after=n)
        s = c.near_stats()
        assert s.flushes > flushes and s.entries == 0, s  # a new instance: RESET (or no position) -> flushed
        # Refilled on demand: a reply that raced its own store's UPDATED is
        # not kept (the race rule), so it may take a server hit or two.
        sources = [c.get("routing.queue", id=qid).source for _ in range(5)]
        assert Source.NEAR in sources, sources


class Proxy:
    """A loopback TCP proxy whose connections the test can cut and refuse for a while."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.open = True
        self.conns = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                cs, _ = self.lsock.accept()
            except OSError:
                return
            if not self.open:
                cs.close()
                continue
            up = socket.create_connection(self.target)
            with self.lock:
                self.conns.append((cs, up))
            threading.Thread(target=self._pipe, args=(cs, up), daemon=True).start()

    def _pipe(self, a, b):
        socks = [a, b]
        try:
            while True:
                r, _, _ = select.select(socks, [], [], 1.0)
                if self.stopped:
                    return
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def cut(self):
        """Refuse new connections and break the live ones."""
        self.open = False
        with self.lock:
            conns, self.conns = self.conns, []
        for a, b in conns:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self.stopped = True
        self.cut()
        self.lsock.close()


def test_resumed_stream_replays_missed_events_without_a_flush(addr, queue_ids):
    qid = queue_ids[17 % len(queue_ids)]
    proxy = Proxy(addr)
    try:
        with near_client(proxy.addr, reconnect_initial=0.05) as c, CacheClient(addr, default_timeout=10) as direct:
            direct.get("routing.queue", id=qid)
            key = c.get("routing.queue", id=qid).key
            require_heartbeats(c)
            assert c.get("routing.queue", id=qid).source is Source.NEAR
            ev = Events(c)
            before = c.near_stats()
            proxy.cut()
            # the stream is down: wait until the client noticed (its connected flag drops)
            end = time.monotonic() + 10
            while c.near_cache.connected and time.monotonic() < end:
                time.sleep(0.01)
            assert not c.near_cache.connected, "the cut did not break the stream"
            n = len(ev.msgs)
            direct.invalidate(keys=[key], reason="purged during the gap")  # missed live
            assert c.near_stats().entries == 1  # still held, not served once stale
            proxy.open = True
            _, m = ev.wait_for(lambda m: m.type == T.TYPE_INVALIDATED and m.key == key, timeout=15, after=n)
            after = c.near_stats()
            assert not any(mm.type == T.TYPE_RESET for _, mm in ev.msgs[n:]), "resume was refused (RESET)"
            assert after.flushes == before.flushes, (before, after)
            assert after.resumes > before.resumes and after.entries == 0, after
            assert c.get("routing.queue", id=qid).source is not Source.NEAR
            print(f"\nnear: resumed after a cut: replayed {m.key} (reason {m.reason!r}), flushes unchanged")
    finally:
        proxy.stop()


# ---------------------------------------------------------------- racing checker


def _admin(url, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


def _get_into(c, qid, box):
    box["r"] = c.get("routing.queue", id=qid)


class Reader:
    """Reads the queue through the near cache all along the checker's rounds (a Get
    every ~0.5 ms) and records every NEAR read: (start time, the value's name)."""

    def __init__(self, c, qid):
        self.c, self.qid = c, qid
        self.near = []
        self.errors = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                r = self.c.get("routing.queue", id=self.qid)
            except CacheError as e:  # recorded, asserted on by the test
                self.errors.append(e)
                continue
            if r.source is Source.NEAR:
                self.near.append((t, r.value.get("name")))
            self.stop.wait(0.0005)

    def close(self):
        self.stop.set()
        self.thread.join(10)


def test_racing_checker_no_near_read_older_than_ack_plus_max_staleness(addr, emulator, queue_ids):
    """Each round: hold the upstream, a Get in flight, PATCH the queue's name in the
    emulator (no change event), Invalidate from another process, release; then, once
    the new name is near-cached, PATCH + Invalidate again (no hold). A reader
    thread reads through the near cache all the time; a NEAR read that started after
    purge i was acknowledged but shows a name older than purge i's PATCH is
    stale: its lateness (read start - ack) must stay under max_staleness."""
    rounds = int(os.environ.get("NEAR_RACE_ROUNDS", "200"))
    max_staleness = 0.5
    qid = queue_ids[18 % len(queue_ids)]
    url = emulator.url
    helper = subprocess.Popen([sys.executable, str(HERE / "near_invalidator.py"), addr], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1)
    acks = []  # (ack time, round) in order
    names = {}  # name -> round that set it
    heard = []  # INVALIDATED received - ack, per round
    reader = None
    try:
        assert helper.stdout.readline().strip() == "ready"

        def purge(key):
            helper.stdin.write(key + "\n")
            line = helper.stdout.readline().split()
            assert line and line[0] == "ok", line
            return float(line[1])

        with near_client(addr, max_staleness=max_staleness) as c:
            key = c.get("routing.queue", id=qid).key
            require_heartbeats(c)
            ev = Events(c)
            reader = Reader(c, qid)
            for i in range(rounds):
                # hold the next upstream fetch of the queue (the reader's or ours), then purge
                # and wait until this client heard it, so the next Get misses
                emulator.fault(path_prefix=f"/api/v2/routing/queues/{qid}", hold=True, count=1)
                n = len(ev.msgs)
                purge(key)
                ev.wait_for(lambda m: m.type == T.TYPE_INVALIDATED and m.key == key, after=n)  # noqa: B023
                box = {}
                g = threading.Thread(target=_get_into, args=(c, qid, box), daemon=True)
                g.start()
                end = time.monotonic() + 10
                while _admin(url, "GET", "/admin/held")["held"] < 1:  # a fetch of the queue is parked upstream
                    assert time.monotonic() < end, "the Get never reached the upstream"
                    time.sleep(0.002)
                name = f"race-{i}-{time.monotonic_ns()}"
                names[name] = len(acks)
                _admin(url, "PATCH", f"/admin/queues/{qid}", {"name": name})
                n = len(ev.msgs)
                acked = purge(key)
                acks.append((acked, names[name]))
                t, _ = ev.wait_for(lambda m: m.type == T.TYPE_INVALIDATED and m.key == key, after=n)  # noqa: B023
                heard.append(t - acked)
                _admin(url, "POST", "/admin/release")
                g.join(10)
                assert "r" in box, "the in-flight Get did not finish"
                end = time.monotonic() + 5
                while c.get("routing.queue", id=qid).source is not Source.NEAR:  # refilled with the new name
                    assert time.monotonic() < end, "the near cache never refilled"
                # and a change while the value sits in the near cache (the reader serves it
                # from there until the INVALIDATED arrives)
                name = f"race-{i}b-{time.monotonic_ns()}"
                names[name] = len(acks)
                _admin(url, "PATCH", f"/admin/queues/{qid}", {"name": name})
                n = len(ev.msgs)
                acked = purge(key)
                acks.append((acked, names[name]))
                t, _ = ev.wait_for(lambda m: m.type == T.TYPE_INVALIDATED and m.key == key, after=n)  # noqa: B023
                heard.append(t - acked)
                end = time.monotonic() + 5
                while c.get("routing.queue", id=qid).source is not Source.NEAR:
                    assert time.monotonic() < end, "the near cache never refilled"
            reader.close()
            stats = c.near_stats()
    finally:
        if reader is not None:
            reader.close()
        emulator.clear_faults()
        _admin(url, "POST", "/admin/release")
        helper.stdin.close()
        helper.wait(10)
    worst, violations, old = 0.0, 0, 0
    j = -1  # index into acks of the last ack before the read started
    for t, nm in reader.near:
        while j + 1 < len(acks) and acks[j + 1][0] < t:
            j += 1
        if j < 0:
            continue
        ack_t, must = acks[j]
        if names.get(nm, -1) < must:  # the value predates the acknowledged purge
            old += 1
            late = t - ack_t
            worst = max(worst, late)
            violations += late > max_staleness
    print(f"\nnear race checker: {rounds} rounds, {len(reader.near)} concurrent near reads "
          f"({stats.hits} near hits in all), {old} showed a value older than the last acknowledged purge, "
          f"worst {worst * 1e3:.2f} ms after the ack, {violations} later than max_staleness "
          f"{max_staleness * 1e3:.0f} ms; INVALIDATED heard at worst {max(heard) * 1e3:.2f} ms after the ack "
          f"(median {sorted(heard)[len(heard) // 2] * 1e3:.2f} ms); {stats.rejected_fills} fills rejected "
          f"by the race rule, {len(reader.errors)} reader errors")
    assert violations == 0
    assert not reader.errors, reader.errors[:3]
    assert len(reader.near) > rounds
