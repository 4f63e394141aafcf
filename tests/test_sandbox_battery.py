"""The code sandbox against hostile programs (tests/sandbox_battery.py): each is contained,
gets a defined reward, the host is unharmed, no forged verdict passes, and the pool keeps
serving. Real processes, as the user the suite runs as and, under root, again as an
unprivileged user."""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rewards.sandbox import Limits, SandboxPool, _is_root, run
from tests import sandbox_battery as battery

NOBODY = 65534
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def host():
    host = battery.Host()
    yield host
    host.close()


@pytest.fixture(scope="module")
def pool():
    pool = SandboxPool(2)
    yield pool
    pool.close()


@pytest.mark.parametrize("name, program, statuses", battery.CONTAINMENT,
                         ids=[c[0] for c in battery.CONTAINMENT])
def test_hostile_program_is_contained(name, program, statuses, pool, host):
    assert pool.isolation.mode != "none", pool.isolation.missing
    assert battery.check_containment(pool, host, name, program, statuses) == []


@pytest.mark.parametrize("name, program, tests", battery.FORGERIES,
                         ids=[f[0] for f in battery.FORGERIES])
def test_forged_verdicts_earn_nothing(name, program, tests, pool):
    assert battery.check_forgery(pool, program, tests) == []


def _readable_copy() -> Path:
    """The sandbox's files where any user can read them (a checkout under /root is not)."""
    tmp = Path(tempfile.mkdtemp(prefix="rewardmill-nobody-"))
    for part in ("rewards/__init__.py", "rewards/sandbox.py", "rewards/sandbox_init.py",
                 "rewards/code_checks.py", "tests/sandbox_battery.py"):
        (tmp / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / part, tmp / part)
    for path in (tmp, *tmp.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return tmp


@pytest.mark.skipif(not _is_root(), reason="the suite already runs as an unprivileged user")
def test_whole_battery_as_an_unprivileged_user():
    """The same battery as `nobody`: isolation from an unprivileged user namespace."""
    copy = _readable_copy()
    asset = Path(f"/rewardmill-battery-nobody-{os.getpid()}")   # owned by nobody, outside /tmp
    asset.mkdir(mode=0o755)
    os.chown(asset, NOBODY, NOBODY)
    try:
        done = subprocess.run([Limits().python, "-I", str(copy / "tests/sandbox_battery.py"), str(asset)],
                              user=NOBODY, group=NOBODY, extra_groups=[], cwd=copy, env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(asset, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["user"] == NOBODY and report["isolation"] == "userns"
    failing = {case: problems for case, problems in report["problems"].items() if problems}
    assert failing == {}
    assert set(report["problems"]) == {c[0] for c in battery.CONTAINMENT + battery.FORGERIES}


# Run as root: make a user namespace whose uids map 1:1 to the host's, forbid further user
# namespaces in it, become `nobody` and run CHECK there: a non-root user on a machine with
# user namespaces switched off (a sysctl, a seccomp profile), for real.
WITHOUT_USERNS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ready, go = os.pipe(), os.pipe()
child = os.fork()
if child == 0:
    assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())
    os.write(ready[1], b"x"); os.read(go[0], 1)
    open("/proc/sys/user/max_user_namespaces", "w").write("0")
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    os.execv(sys.executable, [sys.executable, "-I", "-c", sys.argv[1]])
os.read(ready[0], 1)
for name in ("uid_map", "gid_map"):
    open(f"/proc/{child}/{name}", "w").write("0 0 65536")
os.write(go[1], b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
"""
CHECK = r"""
import sys
sys.path.insert(0, COPY)
from rewards.sandbox import SandboxPool, SandboxUnavailable
pool = SandboxPool(1)
print("mode", pool.isolation.mode)
try:
    pool.run("def f(x): return x", ["assert f(1) == 1"])
    print("ran without isolation")
except SandboxUnavailable as err:
    print("refused:", err)
print("allowed:", pool.run("def f(x): return x", ["assert f(1) == 1"], allow_unisolated=True).passed)
"""


@pytest.mark.skipif(not _is_root(), reason="needs root to build the user-namespace-free user")
def test_without_isolation_model_code_runs_only_when_allowed():
    copy = _readable_copy()
    try:
        done = subprocess.run([Limits().python, "-I", "-c", WITHOUT_USERNS,
                               CHECK.replace("COPY", repr(str(copy)))],
                              capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mode none" in done.stdout
    assert "refused:" in done.stdout and "allow_unisolated" in done.stdout
    assert "user namespaces" in done.stdout               # it says what is missing
    assert "allowed: [True]" in done.stdout
    assert "cannot be isolated" in done.stderr            # and logs it


def test_verdicts_are_per_test_and_partial_credit_survives_a_later_hang():
    code = "def sq(x):\n    if x == 5:\n        while True: pass\n    return x * x"
    result = run(code, ["assert sq(2) == 4", "assert sq(3) == 10", "assert sq(5) == 25",
                        "assert sq(0) == 0"], Limits(wall_s=2, cpu_s=1))
    assert result.passed == [True, False, False, False]
    assert result.status in ("timeout", "cpu_limit") and result.fraction == 0.25
    assert result.reasons[1] == "assert sq(3) == 10 failed (sq(3) = 9)"
    assert "never evaluated" in result.reasons[3]


def test_syntax_error_and_empty_program():
    assert run("def f(:", ["assert f(1) == 1"]).passed == [False]
    assert run("", ["assert f(1) == 1"]).passed == [False]


@pytest.mark.skipif(not _is_root(), reason="needs a directory outside /tmp that only root can make")
def test_a_checkout_at_an_unknown_top_level_directory_stays_hidden():
    """CI clones under /check, users under /data or /scratch: hiding is a whitelist, not a list
    of known places."""
    secret_dir = Path(f"/rewardmill-checkout-{os.getpid()}")
    secret_dir.mkdir()
    try:
        (secret_dir / "secret.txt").write_text("project-secret")
        os.chmod(secret_dir, 0o755)
        os.chmod(secret_dir / "secret.txt", 0o644)
        result = run(f"print(open('{secret_dir}/secret.txt').read())", ["assert f(1) == 1"],
                     battery.LIMITS)
        assert "project-secret" not in result.stdout
        assert "FileNotFoundError" in result.stderr
    finally:
        (secret_dir / "secret.txt").unlink()
        secret_dir.rmdir()


def test_two_pools_on_one_host_never_share_a_user():
    first, second = SandboxPool(2), SandboxPool(2)
    if _is_root():
        assert len(set(first.uids) | set(second.uids)) == 4
    results = [None, None]
    # a fork bomb in one pool must not starve or kill the other's programs
    bomb = threading.Thread(target=lambda: results.__setitem__(
        0, first.run(battery.CONTAINMENT[0][1], battery.TESTS, battery.LIMITS)))
    bomb.start()
    time.sleep(0.3)
    results[1] = second.run("def f(x): return 2 * x", battery.TESTS, battery.LIMITS)
    bomb.join()
    assert results[1].passed == [True] and results[1].status == "ok"
    first.close(), second.close()


@pytest.mark.skipif(not _is_root(), reason="sandbox users exist only under root")
def test_a_slot_user_at_its_process_limit_still_runs_programs():
    """Processes of the slot's user that the pool did not start (another container, zombies
    nobody reaps) do not stop its programs: they are forked, not exec'd, so the kernel's
    process-count check at exec never applies; only the program's own forks would fail."""
    pool = SandboxPool(1)
    [busy] = pool.uids
    hog = subprocess.Popen([Limits().python, "-c", "import threading, time\n"
                            "[threading.Thread(target=time.sleep, args=(30,)).start() for _ in range(40)]"],
                           user=busy)
    try:
        time.sleep(1.0)
        result = pool.run("def f(x): return x + 1", ["assert f(1) == 2"], battery.LIMITS)
        assert result.passed == [True] and result.status == "ok"
    finally:
        hog.kill()
        pool.close()


def test_the_launch_server_comes_back_after_it_dies():
    """The fork server that starts every program is restarted when it is gone, and a closed
    pool leaves no server behind."""
    pool = SandboxPool(1)
    program = ("def f(x): return 2 * x", ["assert f(2) == 4"])
    assert pool.run(*program, battery.LIMITS).passed == [True]
    first = pool._server(battery.LIMITS.python)._process
    first.kill()
    first.wait()
    assert pool.run(*program, battery.LIMITS).passed == [True]
    second = pool._server(battery.LIMITS.python)._process
    assert second.pid != first.pid and second.poll() is None
    pool.close()
    assert second.poll() is not None


def test_pool_runs_in_parallel():
    pool = SandboxPool(2)
    start = time.monotonic()
    results = pool.map([("import time; time.sleep(1)\ndef f(x): return 2 * x", battery.TESTS)] * 4,
                       Limits(wall_s=5))
    assert all(r.passed == [True] for r in results)
    assert time.monotonic() - start < 3.5   # 4 one-second programs on 2 slots


def test_a_run_that_cannot_isolate_refuses_to_start(tmp_path, monkeypatch):
    """Config validation stops reward=verifier on the code task before anything starts, naming the field; the
    machine is made to look isolation-free here (the real detection is tested above)."""
    from orchestrator import config
    from rewards.sandbox import Isolation
    from tests.conftest import compose
    monkeypatch.setattr(config.sandbox, "isolation",
                        lambda: Isolation("none", "userns: unshare: Operation not permitted"))
    cfg = compose(tmp_path, "cluster=inline", "data=toy_code", "reward=verifier")
    with pytest.raises(config.ConfigError, match=r"data\.verifier\.kwargs\.allow_unisolated=False"):
        config.validate(cfg)
    cfg = compose(tmp_path, "cluster=inline", "data=toy_code", "reward=verifier",
                  "data.verifier.kwargs.allow_unisolated=true")
    config.validate(cfg)
