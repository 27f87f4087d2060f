"""Helper process of the racing checker (tests/test_live_near.py): another client
instance that purges. Reads one key per line on stdin, invalidates it at ADDR, and
answers "ok <CLOCK_MONOTONIC seconds when Invalidate returned>" (the clock the parent
process reads too). Usage: python near_invalidator.py ADDR"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cxcache import CacheClient  # noqa: E402


def main() -> None:
    with CacheClient(sys.argv[1], default_timeout=10) as c:
        print("ready", flush=True)
        for line in sys.stdin:
            key = line.strip()
            if not key:
                break
            c.invalidate(keys=[key], reason="near race checker")
            print(f"ok {time.monotonic():.6f}", flush=True)


if __name__ == "__main__":
    main()
