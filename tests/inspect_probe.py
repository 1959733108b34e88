"""What `inspect` costs on a file, measured in a fresh process: its seconds and peak memory growth, after a
warm-up on a small file (what describe imports on first use is not the file's cost)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path


def describe_in_fresh_process(path: Path, warm_up: Path) -> dict:
    """{"seconds", "grew_mb", "info"}: describe(path)'s wall time, peak RSS growth (MB) and result."""
    probe = textwrap.dedent(f"""
        import json, resource, time
        from vislora.tools.inspect import describe
        def rss():
            return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
        describe({str(warm_up)!r})
        before = max(rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        start = time.perf_counter()
        info = describe({str(path)!r})
        seconds = time.perf_counter() - start
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        print(json.dumps({{"seconds": seconds, "grew_mb": grew, "info": info}}, default=str))
    """)
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])
