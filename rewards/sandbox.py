"""Run model-written code against unit tests, in a sandbox. Model code is hostile.

    from rewards.sandbox import run, Limits
    result = run(code, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], Limits(wall_s=5))
    result.passed      # [True, False]: one verdict per test
    result.reasons     # ["", "assertion failed: _p1 == 0"]: why each test failed
    result.fraction    # 0.5
    result.status      # "ok" | "timeout" | "cpu_limit" | "memory_limit" | "output_limit" | "crashed" | "error"

Tests are assert strings or {"input", "output"} stdin/stdout pairs; either way the verdict is
reached in this process, never in the program's (rewards/code_checks.py).

Every program runs in a fresh process, a forked copy of an interpreter that holds no other
program's data (a fork server per pool, rewards/sandbox_init.py, forks a launcher per program,
which forks the program), with:
  - new pid, mount, network, IPC and UTS namespaces: it sees only its own processes (and not
    the host's environment through /proc), has no network, and when it ends or times out
    everything it started dies with it (the pid namespace's init exits);
  - a private tmpfs /tmp holding its working directory, every other mount read-only, and
    every top-level directory outside the system ones an interpreter needs covered by an
    empty tmpfs (`Limits.hidden`), so a checkout, a dataset or a secret is hidden wherever
    it lives;
  - as root: its own user id per pool slot (claimed host-wide with a lock file);
    not as root: an unprivileged user namespace, in which it has no capabilities;
  - CPU time, address space, file size, open files and process count limits (setrlimit),
    no capabilities (every set emptied, the bounding set too), no-new-privileges, and a
    wall-clock limit;
  - an environment holding only PATH, HOME, LANG, and stdout/stderr kept up to
    `Limits.output_bytes`.
Where neither root nor user namespaces are available (seccomp or a sysctl forbids them), the
pool knows it (`isolation()`, logged once with what is missing) and refuses model code unless
the caller allows running it with resource limits only (`allow_unisolated=True`; for the
`code_tests` reward source, its kwargs.allow_unisolated).
"""
from __future__ import annotations

import fcntl
import functools
import logging
import marshal
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from rewards import code_checks

log = logging.getLogger("rewardmill.sandbox")

SANDBOX_UIDS = range(61000, 63000)   # user ids pool slots claim, one each (as root)
UID_LOCK_DIR = "/tmp/rewardmill-sandbox-uids"  # root-only; a held flock = a claimed uid
LAUNCHER = Path(__file__).with_name("sandbox_init.py").read_text()
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


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
    SYSTEM_DIRS and the interpreter's own, plus shared memory and this project's checkout.
    Listed again for every program: a directory made a moment ago is hidden too."""
    keep = set(SYSTEM_DIRS) | {_top_level(python)}
    with os.scandir("/") as entries:   # the entries' types come with the listing: no stat each
        top = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    return tuple(p for p in top if p not in keep) + ("/dev/shm", PROJECT)


@functools.lru_cache(maxsize=None)
def _top_level(python: str) -> str:
    return "/" + Path(os.path.realpath(python)).parts[1]


PROJECT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0             # wall-clock seconds for the program and all its tests (each
                                     # stdin/stdout test: its own run with this limit)
    cpu_s: int = 5                   # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512             # address space (RLIMIT_AS), MiB
    file_mb: int = 16                # largest file it may write (RLIMIT_FSIZE), MiB
    disk_mb: int = 32                # size of its private /tmp (tmpfs), MiB
    processes: int = 16              # processes and threads of its user (RLIMIT_NPROC)
    open_files: int = 64             # RLIMIT_NOFILE
    output_bytes: int = 65536        # stdout and stderr kept, each, bytes
    report_bytes: int = 4 << 20      # probe values read back (assert tests), bytes
    python: str = field(default_factory=_default_python)
    hidden: tuple | None = None      # directories covered by empty tmpfs; None: private_dirs(python)


@dataclass
class SandboxResult:
    passed: list[bool]              # one verdict per test, in order
    status: str                     # how the process ended (see the module docstring)
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    reasons: list[str] = field(default_factory=list)   # per test: why it failed, "" if passed

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


@dataclass(frozen=True)
class Isolation:
    mode: str           # "root" | "userns" | "none" (resource limits only)
    missing: str = ""   # with "none": what was tried and why it failed


class SandboxUnavailable(RuntimeError):
    """Model code would run without isolation and the caller did not allow it."""


@dataclass
class _Process:
    status: str           # as SandboxResult.status
    stdout: str
    stderr: str
    report: str           # what the program wrote to fd 3
    wall_s: float
    setup_error: str = ""


def _is_root() -> bool:
    return os.geteuid() == 0 and sys.platform.startswith("linux")


class LaunchServer:
    """rewards/sandbox_init.py running as a fork server for one interpreter: `spawn` hands it
    a job's fds and gets back the launcher's pid and a pidfd. Restarted if it died (a program
    cannot reach it: it runs as another user or in its own namespaces; unisolated, it might)."""

    def __init__(self, python: str):
        self.python = python
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen | None = None

    def _start(self) -> None:
        host, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with server:
            self._process = subprocess.Popen(
                [self.python, "-I", "-S", "-B", "-c", LAUNCHER, str(server.fileno())],
                stdin=subprocess.DEVNULL, env=ENV, pass_fds=(server.fileno(),),
                start_new_session=True)
        self._sock = host

    def spawn(self, fds: list[int]) -> tuple[int, int]:
        """Fork a launcher for the job in `fds` (job, stdout, stderr, report, status files):
        (its pid, a pidfd for it, which the caller closes)."""
        with self._lock:
            for attempt in range(2):
                if self._sock is None:
                    self._start()
                try:
                    socket.send_fds(self._sock, [b"job"], fds)
                    msg, got, _, _ = socket.recv_fds(self._sock, 32, 1)
                    if msg and got:
                        return int(msg), got[0]
                except OSError:
                    if attempt:
                        raise
                log.warning("sandbox: the launch server exited (%s); starting a new one",
                            self._process.poll())
                self.close()
            raise RuntimeError("sandbox: the launch server did not answer twice in a row")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()   # the server exits at end of file
            self._sock = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def _launch(server: LaunchServer, files: dict[str, bytes], script: str, limits: Limits,
            mode: str, uid: int | None, stdin: bytes | None = None) -> _Process:
    """Run `python script` in a fresh sandbox holding `files` in its working directory."""
    host_dir = tempfile.mkdtemp(prefix="rewardmill-sandbox-") if mode == "none" else None
    workdir = host_dir or "/tmp/work"   # /tmp/work: inside the private /tmp
    if stdin is not None:
        files = {**files, ".stdin": stdin}
    # in-memory files (no filesystem work); a program's writes to them still meet RLIMIT_FSIZE
    job_file, out, err, report, status = (os.fdopen(os.memfd_create(f"sandbox-{name}"), "w+b")
                                          for name in ("job", "out", "err", "report", "status"))
    mb = 1024 * 1024
    job = {"mode": mode, "uid": uid, "workdir": workdir, "files": files,
           "hidden": limits.hidden if limits.hidden is not None else private_dirs(limits.python),
           "disk_mb": limits.disk_mb, "cpu_s": limits.cpu_s,
           "rlimits": [(resource.RLIMIT_AS, limits.memory_mb * mb),
                       (resource.RLIMIT_FSIZE, limits.file_mb * mb),
                       (resource.RLIMIT_NOFILE, limits.open_files),
                       (resource.RLIMIT_NPROC, limits.processes),
                       (resource.RLIMIT_CORE, 0)],
           "script": script,
           "env": {**ENV, "HOME": workdir}, "stdin": ".stdin" if stdin is not None else "/dev/null"}
    with job_file:
        job_file.write(marshal.dumps(job))
        job_file.flush()
        start = time.monotonic()
        pid, pidfd = server.spawn([f.fileno() for f in (job_file, out, err, report, status)])
    timed_out = False
    try:
        if not _exits_within(pidfd, limits.wall_s):
            timed_out = True
            _stop(pidfd, mode)
        try:   # what the program started outside a pid namespace (its own process group)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    finally:
        os.close(pidfd)
        if host_dir:
            shutil.rmtree(host_dir, ignore_errors=True)
    wall = time.monotonic() - start
    lines = _read_capped(status, 4096)[0].splitlines()
    first = lines[0].split(" ", 1) if lines else ["", ""]
    stdout, full_out = _read_capped(out, limits.output_bytes)
    stderr, full_err = _read_capped(err, limits.output_bytes)
    report = _read_capped(report, limits.report_bytes)[0]
    if first[0] == "setup-error":
        return _Process("error", stdout, stderr, report, wall, setup_error=" ".join(first))
    ended = {"exit": 1, "signal": -1}.get(first[0])
    returncode = ended * int(first[1]) if ended else None
    return _Process(_status(returncode, timed_out, stderr, full_out or full_err),
                    stdout, stderr, report, wall)


def _exits_within(pidfd: int, seconds: float | None) -> bool:
    """Wait for the launcher to exit, woken the moment it does."""
    return bool(select.select([pidfd], [], [], seconds)[0])


def _stop(pidfd: int, mode: str) -> None:
    """Past the wall-clock limit: the launcher kills the namespace's init and returns once
    every process in it is gone (SIGKILL if it does not answer in time)."""
    try:
        if mode != "none":
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if _exits_within(pidfd, 5):
                return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:   # it exited (and was reaped) meanwhile
        return
    _exits_within(pidfd, None)


def _status(returncode: int | None, timed_out: bool, stderr: str, output_full: bool) -> str:
    if timed_out:
        return "timeout"
    if returncode is None:   # the launcher or the namespace's init died: the program killed it
        return "crashed"
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


def _read_capped(f, cap: int) -> tuple[str, bool]:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    data = f.read(cap)
    f.close()
    return data.decode("utf-8", "replace"), size > cap


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


@functools.lru_cache(maxsize=None)
def isolation(python: str | None = None) -> Isolation:
    """The strongest isolation this process can set up, found by starting an empty program
    (once per process): "root", else "userns", else "none" with the reasons."""
    limits = Limits(wall_s=30, python=python or _default_python())
    claims = UidClaims() if _is_root() else None
    problems = []
    server = LaunchServer(limits.python)
    try:
        for mode in ("root", "userns") if claims else ("userns",):
            uid = claims.claim() if claims else None
            try:
                probe = _launch(server, {"solution.py": b""}, "solution.py", limits, mode, uid)
            finally:
                if claims:
                    claims.release(uid)
            if probe.status == "ok":
                return Isolation(mode)
            problems.append(f"{mode}: {probe.setup_error or probe.status + ' ' + probe.stderr[-300:]}")
    finally:
        server.close()
    missing = ("; ".join(problems) + ". User namespaces may be off (sysctl "
               "user.max_user_namespaces or kernel.unprivileged_userns_clone) or blocked by "
               "a seccomp/AppArmor profile; as root, CAP_SYS_ADMIN may be missing")
    log.warning("sandbox: model code cannot be isolated here (%s); it runs only where the "
                "caller allows it, with resource limits alone", missing)
    return Isolation("none", missing)


class SharedRuns:
    """Identical jobs share one run: a job whose (code, tests, limits) is running now waits for
    that run, and one run lately gets its result. A group of 8 responses to one prompt often
    holds the same program several times (43% of toy code's were repeats at its warm start, more
    as the policy sharpens). A program's verdict depends on nothing but the job (a fresh
    sandbox each time), so a repeat is judged the same, and a program that passes by chance is
    no more likely to be lucky twice. A run that could not be set up ("error") is never shared:
    the next caller tries again."""

    def __init__(self, keep: int = 256):
        self.keep = keep                                  # recent results kept (each <= 2 x output_bytes)
        self.lock = threading.Lock()
        self.running: dict[tuple, Future] = {}
        self.recent: OrderedDict[tuple, SandboxResult] = OrderedDict()
        self.runs = self.shared = 0                       # jobs run, jobs answered by another's run

    def share(self, key: tuple, run) -> SandboxResult:
        with self.lock:
            if key in self.recent:
                self.recent.move_to_end(key)
                self.shared += 1
                return self.recent[key]
            future = self.running.get(key)
            first = future is None
            if first:
                future = self.running[key] = Future()
                self.runs += 1
        if not first:
            result = future.result()    # raises what the run raised (an unjudgeable test, say)
            if result.status == "error":
                return run()
            with self.lock:
                self.shared += 1
            return result
        try:
            result = run()
        except BaseException as err:
            with self.lock:
                self.running.pop(key, None)
            future.set_exception(err)
            raise
        with self.lock:
            self.running.pop(key, None)
            if result.status != "error":
                self.recent[key] = result
                while len(self.recent) > self.keep:
                    self.recent.popitem(last=False)
        future.set_result(result)
        return result


class SandboxPool:
    """Runs programs in parallel, one per slot; as root each slot has its own sandbox user."""

    def __init__(self, size: int = 2, python: str | None = None):
        self.size = size
        self.isolation = isolation(python)
        self._cond = threading.Condition()
        self._claims = UidClaims() if _is_root() and self.isolation.mode != "none" else None
        self._free: list[int | None] = [self._claims.claim() if self._claims else None
                                        for _ in range(size)]
        self._servers: dict[str, LaunchServer] = {}   # interpreter -> its fork server
        self.repeats = SharedRuns()   # jobs run with share=True

    def close(self) -> None:
        """Stop the fork servers, give the pool's sandbox users back (both also happen when
        the process exits)."""
        with self._cond:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()
        for uid in self.uids:
            self._claims.release(uid)

    def _server(self, python: str) -> LaunchServer:
        with self._cond:
            if python not in self._servers:
                self._servers[python] = LaunchServer(python)
            return self._servers[python]

    @property
    def uids(self) -> list[int]:
        """The sandbox user ids this pool holds (for checks that nothing is left running)."""
        return sorted(self._claims._held) if self._claims else []

    def run(self, code: str, tests: list, limits: Limits = Limits(),
            allow_unisolated: bool = False, share: bool = False) -> SandboxResult:
        """Run `code` against `tests` (see rewards/code_checks.py). Raises UnjudgeableTest for
        tests that cannot be judged, SandboxUnavailable when isolation is missing and not
        allowed. share=True: a job identical to one running or run lately takes its result
        (SharedRuns) instead of running again."""
        checks = code_checks.plan(tests)
        if self.isolation.mode == "none" and not allow_unisolated:
            raise SandboxUnavailable(
                f"model code would run without isolation ({self.isolation.missing}). Run as "
                "root or enable unprivileged user namespaces; or, knowing the program can then "
                "reach this machine as your user, set allow_unisolated=true (reward source "
                "kwargs.allow_unisolated)")
        if not share:
            return self._in_a_slot(code, checks, limits)
        return self.repeats.share((code, repr(tests), limits),
                                  lambda: self._in_a_slot(code, checks, limits))

    def _in_a_slot(self, code: str, checks, limits: Limits) -> SandboxResult:
        with self._cond:
            while not self._free:
                self._cond.wait()
            uid = self._free.pop()
        try:
            return self._judge(code, checks, limits, uid)
        finally:
            with self._cond:
                self._free.append(uid)
                self._cond.notify()

    def _judge(self, code: str, checks, limits: Limits, uid: int | None) -> SandboxResult:
        mode, server = self.isolation.mode, self._server(limits.python)
        if isinstance(checks, code_checks.AssertPlan):
            proc = _launch(server, code_checks.runner_files(checks, code), "runner.py", limits, mode, uid)
            passed, reasons = code_checks.judge_asserts(checks, proc.report)
            return SandboxResult(passed, proc.status, proc.stdout, proc.stderr, proc.wall_s,
                                 reasons)
        passed, reasons, runs = [], [], []
        for test in checks:   # one fresh run per input: nothing carries over between tests
            proc = _launch(server, {"solution.py": code.encode("utf-8", "replace")}, "solution.py",
                           limits, mode, uid, stdin=test.input.encode())
            ok = proc.status == "ok" and code_checks.same_output(proc.stdout, test.output)
            passed.append(ok)
            reasons.append("" if ok else f"status {proc.status}" if proc.status != "ok"
                           else "wrong output")
            runs.append(proc)
        worst = next((p for p in runs if p.status != "ok"), runs[0])
        return SandboxResult(passed, worst.status, worst.stdout, worst.stderr,
                             sum(p.wall_s for p in runs), reasons)

    def map(self, jobs: list[tuple[str, list]], limits: Limits = Limits(),
            allow_unisolated: bool = False) -> list[SandboxResult]:
        """Run (code, tests) jobs concurrently, `size` at a time; results in order."""
        results: list[SandboxResult | None] = [None] * len(jobs)

        def work(i: int) -> None:
            results[i] = self.run(*jobs[i], limits, allow_unisolated)

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
            # two per core: a program's wall time is partly waits (forks, its launcher, the
            # host's wake-up), which a second program per core fills (bench_sandbox.py --slots)
            slots = os.environ.get("REWARDMILL_SANDBOX_SLOTS", 2 * (os.cpu_count() or 1))
            _POOL = SandboxPool(int(slots))
        return _POOL


def run(code: str, tests: list | str, limits: Limits = Limits(),
        allow_unisolated: bool = False, share: bool = False) -> SandboxResult:
    """Run `code` against `tests` (assert strings or {"input", "output"} dicts), sandboxed;
    share: see SandboxPool.run."""
    if isinstance(tests, str):
        tests = [tests]
    return default_pool().run(code, tests, limits, allow_unisolated, share)
