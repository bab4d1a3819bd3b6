"""Shared benchmark helpers: machine line, timing, tables, child-process peak RSS."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEV_PARQUET = ROOT.parent / "shared" / "data" / "commits-dev.parquet"


def machine() -> str:
    """One line: CPU model, cores, memory, Python and key library versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import polars
    import pyarrow

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
        f"pyarrow {pyarrow.__version__}, polars {polars.__version__}; load average at start {load}"
    )


# One numpy copy stream over 256 MB, timed from a shared start time (argv[1], time.time()) so
# that streams in separate processes overlap; prints its GB/s.
_COPY_STREAM = """
import sys, time
import numpy as np
a = np.ones(256 << 20, np.uint8); b = np.empty_like(a); np.copyto(b, a)
while time.time() < float(sys.argv[1]):
    time.sleep(0.005)
t = time.perf_counter()
for _ in range(24):
    np.copyto(b, a)
print(24 * 256 / 1024 / (time.perf_counter() - t))
"""


def memory_bus() -> str:
    """One line: GB/s of one numpy copy stream alone, then of each of two at once (separate
    processes, started together): how much of the memory bus two busy cores of this machine leave
    each other right now. On a VM it changes by the minute (BENCHMARKS.md, fourteenth round:
    53-62 % of one stream in 24 probes of 42, 92-101 % in 17); printed with a sitting as a record of
    the host's state, not as its explanation (the build's spread did not follow it)."""

    def streams(n: int) -> list[float]:
        start = f"{time.time() + 2.0:.3f}"  # past both processes' start and allocation
        procs = [subprocess.Popen([sys.executable, "-c", _COPY_STREAM, start], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [float(p.communicate()[0]) for p in procs]

    one, two = streams(1)[0], streams(2)
    each = sum(two) / len(two)
    return f"memory bus (numpy copy of 256 MB): one stream {one:.1f} GB/s; two at once {each:.1f} GB/s each ({each / one:.0%} of one)"


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of `repeat` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MB of its largest descendant process).

    A fresh Python wrapper reads RUSAGE_CHILDREN, which covers every waited-for
    descendant (the CLI, the Dask nannies and workers).
    """
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:]).returncode;"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True, check=True)
    wall, rss_kb, rc = out.stdout.split()[-3:]
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}): {out.stderr[-2000:]}")
    return float(wall), int(rss_kb) / 1024


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pasteable into BENCHMARKS.md)."""
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def require_dev_data() -> Path:
    if not DEV_PARQUET.is_file():
        sys.exit(f"{DEV_PARQUET} not found: this benchmark needs the dev data beside the checkout")
    return DEV_PARQUET
