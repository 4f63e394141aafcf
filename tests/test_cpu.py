"""core/cpu.py: the learner's niceness reaches every thread of its process."""
import subprocess
import sys

from tests.conftest import REPO

CHILD = """
import os, threading, time
from core.cpu import set_niceness
started = threading.Event()
threading.Thread(target=lambda: (started.set(), time.sleep(5)), daemon=True).start()
started.wait()
target = min(os.getpriority(os.PRIO_PROCESS, 0) + 3, 19)   # raising needs no privilege
set_niceness(target)
later = []
t = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, 0)))
t.start(); t.join()
tids = [int(t) for t in os.listdir("/proc/self/task")]
print(target, sorted({os.getpriority(os.PRIO_PROCESS, tid) for tid in tids}), later)
"""


def test_niceness_reaches_every_thread_and_threads_started_later():
    """Linux keeps a niceness per thread: a thread started before the call (as torch's and
    Ray's are) must be moved too, and one started after inherits it."""
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split(maxsplit=1)
    target, rest = int(out[0]), out[1]
    assert rest.strip() == f"[{target}] [{target}]", rest
