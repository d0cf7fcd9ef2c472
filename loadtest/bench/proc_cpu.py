"""CPU seconds on Linux: per process (all threads, from the kernel's per-process CPU clock), the children of a
process, and the whole machine's busy time (/proc/stat); what ``bench e2e`` splits a load phase's CPU with.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc times are in clock ticks
CPUCLOCK_SCHED = 2  # Linux: clock id ((~pid) << 3) | 2 is process pid's CPU time (MAKE_PROCESS_CPUCLOCK)


def process_seconds(pid: int) -> float:
    """CPU seconds of a live process, all its threads, exited ones included, to the nanosecond: the kernel's
    per-process CPU clock (what clock_getcpuclockid(3) names); clock ticks from /proc/<pid>/stat where that clock
    cannot be read; 0.0 once the process is gone."""
    try:
        return time.clock_gettime(((~pid) << 3) | CPUCLOCK_SCHED)
    except OSError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": the comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat(5)


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (every thread's children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(out))


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / TICKS
    raise RuntimeError("/proc/stat has no cpu line")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds at one moment: the machine, and each watched process (pid -> seconds)."""

    machine: float
    processes: dict[int, float]

    @classmethod
    def take(cls, pids: list[int]) -> CpuSnapshot:
        return cls(machine_busy_seconds(), {pid: process_seconds(pid) for pid in pids})

    def since(self, before: CpuSnapshot, pids: list[int]) -> float:
        """CPU seconds the processes ``pids`` used between ``before`` and this snapshot."""
        return sum(self.processes.get(p, 0.0) - before.processes.get(p, 0.0) for p in pids)
