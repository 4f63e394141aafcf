"""Run model-written Python against unit tests, in a sandbox. Model code is hostile.

    from rewards.sandbox import run, Limits
    result = run(code, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], Limits(wall_s=5))
    result.passed      # [True, False]: one verdict per test
    result.fraction    # 0.5
    result.status      # "ok" | "timeout" | "cpu_limit" | "memory_limit" | "output_limit" | "crashed" | "error"

Every run is a fresh process (the interpreter `Limits.python`) with:
  - CPU time, address space, file size, open files and process count limits (setrlimit);
  - a wall-clock limit, after which every process it started is killed;
  - when started as root (the usual case in containers): its own user id per pool slot (claimed
    host-wide with a lock file, so two pools on one machine never share one), a new
    network namespace with no interfaces (no network), and a new mount namespace in which
    /tmp is a small fresh tmpfs holding the throwaway working directory, and every other
    directory (`Limits.hidden`: by default all top-level ones but the system directories an
    interpreter needs, so a checkout is hidden wherever it lives) is covered by an empty tmpfs;
  - an environment holding only PATH, HOME, LANG;
  - stdout/stderr captured up to `Limits.output_bytes`.
Without root the process limits, wall limit and clean-up still apply, but not the user,
network and filesystem isolation (a warning says so once).

Test verdicts are reported by a runner that reads a one-time nonce from stdin before the
model's code runs, so printing "all passed" or exiting early (`os._exit(0)`) earns nothing.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rewardmill.sandbox")

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 1, 2, 4, 16384, 1 << 18
SANDBOX_UIDS = range(61000, 63000)   # user ids pool slots claim, one each
UID_LOCK_DIR = "/tmp/rewardmill-sandbox-uids"  # root-only; a held flock = a claimed uid


def _default_python() -> str:
    """An interpreter every user can execute (a venv under /root often is not)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & 0o001:
            return candidate
    return sys.executable


# what an interpreter needs to start; everything else at / is covered (a whitelist, because a
# checkout, a dataset or a secret may live anywhere: /work, /check, /data, ...)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
               "/proc", "/dev", "/sys", "/tmp")


def private_dirs(python: str) -> tuple:
    """The directories a sandboxed program must not see: every real top-level directory outside
    SYSTEM_DIRS and the interpreter's own, plus shared memory and this project's checkout."""
    keep = set(SYSTEM_DIRS) | {"/" + Path(os.path.realpath(python)).parts[1]}
    top = sorted(str(p) for p in Path("/").iterdir() if p.is_dir() and not p.is_symlink())
    project = str(Path(__file__).resolve().parents[1])
    return tuple(p for p in top if p not in keep) + ("/dev/shm", project)


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0             # wall-clock seconds for the whole program and its tests
    cpu_s: int = 5                   # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512             # address space (RLIMIT_AS), MiB
    file_mb: int = 16                # largest file it may write (RLIMIT_FSIZE), MiB
    disk_mb: int = 32                # size of its private /tmp (tmpfs), MiB
    processes: int = 16              # processes and threads of its user (RLIMIT_NPROC)
    open_files: int = 64             # RLIMIT_NOFILE
    output_bytes: int = 65536        # stdout and stderr kept, each
    python: str = field(default_factory=_default_python)
    hidden: tuple | None = None      # directories covered by empty tmpfs; None: private_dirs(python)


@dataclass
class SandboxResult:
    passed: list[bool]              # one verdict per test, in order
    status: str                     # how the process ended (see the module docstring)
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


RUNNER = r'''
import json, os, sys
nonce = sys.stdin.readline().strip()
sys.stdin.close()
def _report(index, ok, _fd=os.dup(1), _n=nonce):
    os.write(_fd, ("\n" + _n + json.dumps([index, ok]) + "\n").encode())
del nonce
_code = open("solution.py").read()
_tests = json.load(open("tests.json"))
_scope = {"__name__": "__main__"}
try:
    exec(compile(_code, "solution.py", "exec"), _scope)
    _loaded = True
except BaseException as _err:
    print(f"solution failed to load: {type(_err).__name__}: {_err}", file=sys.stderr)
    _loaded = False
for _i, _t in enumerate(_tests):
    _ok = False
    if _loaded:
        try:
            exec(compile(_t, f"test_{_i}", "exec"), _scope)
            _ok = True
        except BaseException as _err:
            print(f"test {_i} failed: {type(_err).__name__}: {_err}", file=sys.stderr)
    _report(_i, _ok)
'''


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _isolate(workdir: str, files: dict[str, str], limits: Limits, uid: int | None) -> None:
    """Runs in the child between fork and exec: namespaces, mounts, limits, user."""
    if uid is not None:
        libc = _libc()
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
        for path in limits.hidden if limits.hidden is not None else private_dirs(limits.python):
            if os.path.isdir(path):
                _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs",
                                  MS_NOSUID | MS_NODEV | MS_RDONLY, b"size=4k,mode=755"),
                       f"hide {path}")
        _check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                          f"size={limits.disk_mb}m,mode=1777".encode()), "mount /tmp")
        # a /proc that shows the sandbox user only its own processes (best effort)
        libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV, b"hidepid=2")
        os.makedirs(workdir)
        for name, text in files.items():
            Path(workdir, name).write_text(text)
        os.chown(workdir, uid, uid)
    os.chdir(workdir)
    mb = 1024 * 1024
    # CPU: SIGXCPU at the soft limit, SIGKILL a second later if the program ignores it
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    for name, value in ((resource.RLIMIT_AS, limits.memory_mb * mb),
                        (resource.RLIMIT_FSIZE, limits.file_mb * mb),
                        (resource.RLIMIT_NOFILE, limits.open_files),
                        (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(name, (value, value))
    if uid is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _is_root() -> bool:
    return os.geteuid() == 0 and sys.platform.startswith("linux")


def _pids_of(uid: int, zombies: bool = False) -> list[int]:
    """Processes of `uid`; zombies only when asked (they are dead, but until reaped they
    still count against the user's RLIMIT_NPROC)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if int(fields["Uid"].split()[0]) == uid and (zombies or fields["State"].split()[0] != "Z"):
                    pids.append(int(entry))
            except (OSError, KeyError, ValueError):
                pass
    return pids


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the program and everything it started (it may have left its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)


def _kill_uid(uid: int) -> None:
    for _ in range(50):  # a fork bomb keeps forking while we kill: repeat until none is left
        pids = _pids_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _status(returncode: int, timed_out: bool, stderr: str, output_full: bool) -> str:
    if timed_out:
        return "timeout"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and "MemoryError" not in stderr:
        return "cpu_limit" if returncode == -signal.SIGXCPU else "crashed"
    # Python ignores SIGXFSZ: over-size writes fail with EFBIG ("File too large") instead
    if returncode == -signal.SIGXFSZ or output_full or "File too large" in stderr:
        return "output_limit"
    if "MemoryError" in stderr:
        return "memory_limit"
    if returncode < 0:
        return "crashed"
    return "ok"


class UidBusy(Exception):
    """exec failed with EAGAIN: the uid has RLIMIT_NPROC processes we cannot see or reap
    (another pid namespace, unreaped zombies). The slot moves to another uid."""


class UidClaims:
    """Sandbox user ids held by this process. A uid is claimed by holding an flock on its lock
    file, which the kernel drops when the process dies, so a crashed run frees its uids. A uid
    that still has processes (of a crashed run, or zombies nobody reaps) is passed over."""

    def __init__(self):
        self._held: dict[int, int] = {}     # uid -> lock file descriptor
        self._lock = threading.Lock()
        os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)

    def claim(self) -> int:
        with self._lock:
            for uid in SANDBOX_UIDS:
                if uid in self._held:
                    continue
                fd = os.open(f"{UID_LOCK_DIR}/{uid}", os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                _kill_uid(uid)   # leftovers of a crashed run
                if _pids_of(uid, zombies=True):
                    os.close(fd)
                    continue
                self._held[uid] = fd
                return uid
        raise RuntimeError(f"sandbox: every uid in {SANDBOX_UIDS} is claimed or busy")

    def release(self, uid: int) -> None:
        with self._lock:
            os.close(self._held.pop(uid))


def _run_in_slot(code: str, tests: list[str], limits: Limits, uid: int | None) -> SandboxResult:
    isolated = uid is not None
    files = {"solution.py": code, "tests.json": json.dumps(tests), "runner.py": RUNNER}
    host_dir = None
    if isolated:
        workdir = "/tmp/work"   # inside the private /tmp of the child's mount namespace
    else:
        host_dir = tempfile.mkdtemp(prefix="rewardmill-sandbox-")
        workdir = host_dir
        for name, text in files.items():
            Path(workdir, name).write_text(text)
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    nonce = secrets.token_hex(16)
    start = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen(
            [limits.python, "-I", "-S", "-B", "runner.py"], stdin=subprocess.PIPE, stdout=out,
            stderr=err, env={"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"},
            preexec_fn=lambda: _isolate(workdir, files, limits, uid), start_new_session=True,
            close_fds=True)
    except (OSError, subprocess.SubprocessError) as error:
        if host_dir:
            shutil.rmtree(host_dir, ignore_errors=True)
        if isinstance(error, OSError) and error.errno == errno.EAGAIN and isolated:
            raise UidBusy(uid) from error
        return SandboxResult([False] * len(tests), "error", stderr=str(error))
    try:
        proc.stdin.write((nonce + "\n").encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    try:
        proc.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_all(proc, uid)
    proc.wait()
    wall = time.monotonic() - start
    if host_dir:
        shutil.rmtree(host_dir, ignore_errors=True)
    passed, stdout, full_out = _verdicts(out, nonce, len(tests), limits.output_bytes)
    stderr, full_err = _read_capped(err, limits.output_bytes)
    status = _status(proc.returncode, timed_out, stderr, full_out or full_err)
    return SandboxResult(passed, status, stdout, stderr, wall)


def _verdicts(f, nonce: str, count: int, cap: int) -> tuple[list[bool], str, bool]:
    """Test verdicts from the runner's nonce lines (anywhere in the output, which the file
    size limit bounds), and the program's own output, capped."""
    passed, shown, size = [False] * count, [], 0
    f.seek(0)
    for raw in f:
        line = raw.decode("utf-8", "replace")
        if line.startswith(nonce):
            try:
                index, ok = json.loads(line[len(nonce):])
                if isinstance(index, int) and 0 <= index < count:
                    passed[index] = ok is True
            except (ValueError, TypeError):
                pass
        elif line != "\n":  # the runner starts each verdict on a fresh line
            if size < cap:
                shown.append(line[:cap - size])
            size += len(line)
    f.close()
    return passed, "".join(shown), size > cap


def _read_capped(f, cap: int) -> tuple[str, bool]:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    data = f.read(cap)
    f.close()
    return data.decode("utf-8", "replace"), size > cap


class SandboxPool:
    """Runs programs in parallel, one per slot; each slot has its own sandbox user (as root;
    otherwise slots are None and only resource limits apply)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._cond = threading.Condition()
        if _is_root():
            self._claims = UidClaims()
            self._free: list[int | None] = [self._claims.claim() for _ in range(size)]
        else:
            self._claims = None
            self._free = [None] * size
            log.warning("sandbox: not root, so programs run without a separate user, network "
                        "namespace and private filesystem; only resource limits apply")

    def close(self) -> None:
        """Give the pool's sandbox users back (also happens when the process exits)."""
        for uid in self.uids:
            self._claims.release(uid)

    @property
    def uids(self) -> list[int]:
        """The sandbox user ids this pool holds (for checks that nothing is left running)."""
        return sorted(self._claims._held) if self._claims else []

    def run(self, code: str, tests: list[str], limits: Limits = Limits()) -> SandboxResult:
        with self._cond:
            while not self._free:
                self._cond.wait()
            uid = self._free.pop()
        try:
            for _ in range(3):
                try:
                    return _run_in_slot(code, list(tests), limits, uid)
                except UidBusy:
                    log.warning("sandbox: uid %d is at its process limit with processes we "
                                "cannot reap; the slot moves to another uid", uid)
                    fresh = self._claims.claim()
                    self._claims.release(uid)
                    uid = fresh
            return SandboxResult([False] * len(tests), "error",
                                 stderr="sandbox: no usable uid (process limit reached)")
        finally:
            with self._cond:
                self._free.append(uid)
                self._cond.notify()

    def map(self, jobs: list[tuple[str, list[str]]], limits: Limits = Limits()) -> list[SandboxResult]:
        """Run (code, tests) jobs concurrently, `size` at a time; results in order."""
        results: list[SandboxResult | None] = [None] * len(jobs)

        def work(i: int) -> None:
            results[i] = self.run(*jobs[i], limits)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results


_POOL: SandboxPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> SandboxPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = SandboxPool(int(os.environ.get("REWARDMILL_SANDBOX_SLOTS", os.cpu_count() or 2)))
        return _POOL


def run(code: str, tests: list[str] | str, limits: Limits = Limits()) -> SandboxResult:
    """Run `code`, then each test (a snippet of Python that raises on failure), sandboxed."""
    if isinstance(tests, str):
        tests = [tests]
    return default_pool().run(code, tests, limits)
