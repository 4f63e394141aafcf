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


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep memory a process frees for its next allocations instead of
    handing it back to the kernel. By default every tensor over a few MB is its own mmap, and
    freed heap tops are trimmed, so each training step touched ~700 MB of fresh pages: on the
    tiny model's toy code batch 170,000 page faults, 0.55 s of system CPU and, on a VM whose
    balloon reports free pages to the host, more again stolen by the hypervisor. Kept, a step
    faults ~15,000 pages and takes 0.06 s of system CPU; under steal it ran 25-35% faster, on
    a quiet host about as fast. The cost: a process holds on to its peak heap (it would touch
    it again next step anyway). False where the C library is not glibc."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, 32 << 20),    # glibc's largest: tensors up to 32 MB come from the heap
        (M_TRIM_THRESHOLD, 1 << 30),     # never trim a heap top below 1 GB
        (M_TOP_PAD, 256 << 20)))         # nor shrink a thread's arena (autograd's backward thread)
