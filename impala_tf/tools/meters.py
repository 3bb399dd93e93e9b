"""What the benchmark's stages measure with: this process's CPU time, the cores it may use,
and a wall-and-CPU window."""

import os
import resource
import time


def cpu_seconds() -> float:
    """This process's user and system CPU seconds so far (getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class Meter:
    """Wall and CPU time over a measured window: `with Meter() as m: ...`, then `m.wall`,
    `m.cpu` in seconds."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu
