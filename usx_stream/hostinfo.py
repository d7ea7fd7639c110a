"""What a timing was measured on: CPU model, logical CPUs, threads per core, load.

Machines of one kind differ: the same benchmark ran 2-2.5x faster on two real cores than on two SMT
siblings of one core, so every benchmark report names the host it ran on (Linux ``/proc`` and ``/sys``;
fields that cannot be read are None).
"""

from __future__ import annotations

import os
from pathlib import Path


def _cpu_model(cpuinfo: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model") and value.strip():
            return value.strip()
    return None


def _threads_per_core(sys_cpu: Path) -> int | None:
    """Logical CPUs sharing cpu0's core (``thread_siblings_list`` such as ``0``, ``0,1`` or ``0-1``)."""
    try:
        text = (sys_cpu / "cpu0" / "topology" / "thread_siblings_list").read_text().strip()
    except OSError:
        return None
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi) - int(lo) + 1 if hi else 1
    return count


def describe_host(*, proc: str | Path = "/proc", sys_cpu: str | Path = "/sys/devices/system/cpu") -> dict:
    """``{"cpu_model", "logical_cpus", "threads_per_core", "load_average"}``."""
    try:
        model = _cpu_model((Path(proc) / "cpuinfo").read_text())
    except OSError:
        model = None
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cpu_model": model, "logical_cpus": os.cpu_count(), "threads_per_core": _threads_per_core(Path(sys_cpu)),
            "load_average": load}


def host_line(host: dict) -> str:
    """One line for a benchmark header."""
    tpc = host.get("threads_per_core")
    cores = "" if not tpc else f", {tpc} thread{'s' if tpc > 1 else ''} per core"
    return f"{host.get('cpu_model') or 'unknown CPU'}, {host.get('logical_cpus')} logical CPUs{cores}, " \
           f"load average {host.get('load_average')}"
