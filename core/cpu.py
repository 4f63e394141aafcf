"""A process's share of the CPU when stages share the cores (scheduler.mode=async)."""
from __future__ import annotations

import logging
import os

log = logging.getLogger("rewardmill")


def set_niceness(nice: int) -> None:
    """Give every thread of this process OS niceness `nice` (Linux keeps one per thread;
    threads started later inherit it). Lowering it below the current value needs
    CAP_SYS_NICE (root): without it, warn and keep the current one."""
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:   # not Linux: the process's value
        threads = [0]
    try:
        for tid in threads:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except PermissionError:
        log.warning("learner.nice=%d: this user may not lower a process's niceness (needs "
                    "CAP_SYS_NICE); the learner keeps niceness %d", nice,
                    os.getpriority(os.PRIO_PROCESS, 0))
    except ProcessLookupError:   # a thread ended meanwhile
        pass
