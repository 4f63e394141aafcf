"""The code sandbox against hostile programs: each is contained, gets a defined reward, the
host is unharmed and the pool keeps serving. Runs real processes."""
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from rewards.sandbox import Limits, SandboxPool, _is_root, run

LIMITS = Limits(wall_s=3, cpu_s=2, memory_mb=256)
CANARY = Path("/tmp/rewardmill-canary.txt")
README = Path(__file__).resolve().parents[1] / "README.md"

# (name, program, statuses it may end with). Each program's single test is "assert True",
# so a contained program that is merely noisy still passes; what matters is containment.
HOSTILE = [
    ("fork_bomb", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", None),
    ("fork_bomb_detached", "import os\nwhile True:\n    try:\n        if os.fork() == 0: os.setsid()\n    except OSError: pass", None),
    ("thread_bomb", "import threading, time\nwhile True:\n    try: threading.Thread(target=time.sleep, args=(60,)).start()\n    except RuntimeError: pass", None),
    ("memory_bomb", "x = []\nwhile True: x.append(bytearray(10**7))", {"memory_limit", "crashed", "cpu_limit"}),
    ("one_huge_allocation", "x = bytearray(10**11)", {"memory_limit"}),
    ("infinite_loop", "while True: pass", {"cpu_limit"}),
    ("sleep_forever", "import time; time.sleep(3600)", {"timeout"}),
    ("busy_children", "import subprocess\n[subprocess.Popen(['sleep', '3600']) for _ in range(4)]\nwhile True: pass", None),
    ("huge_stdout", "import sys\nwhile True: sys.stdout.write('x' * 65536)", {"output_limit"}),
    ("huge_stderr", "import sys\nwhile True: sys.stderr.write('y' * 65536)", {"output_limit"}),
    ("huge_file", "f = open('big.bin', 'wb')\nwhile True: f.write(b'0' * 2**20)", {"output_limit"}),
    ("fill_tmp", "import os\nfor i in range(10**6): open(f'/tmp/f{i}', 'wb').write(b'0' * 2**20)", None),
    ("write_outside_workdir", "for p in ['/etc/rewardmill-pwned', '/usr/pwned', '/var/pwned', '/pwned']:\n    try: open(p, 'w').write('x')\n    except OSError: pass", None),
    ("write_canary_in_tmp", f"open('{CANARY}', 'w').write('pwned')", None),
    ("read_shadow", "print(open('/etc/shadow').read())", None),
    ("read_project_files", f"print(open('{README}').read())", None),
    ("read_root_home", "import os; print(os.listdir('/root'))", None),
    ("read_host_environment", "import os; print(dict(os.environ)); print(open('/proc/1/environ').read())", None),
    ("list_host_processes", "import os\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try: print(open(f'/proc/{p}/cmdline').read())\n        except OSError: pass", None),
    ("open_socket_outbound", "import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)", None),
    ("open_socket_loopback", "import socket; socket.create_connection(('127.0.0.1', PORT), timeout=2).send(b'pwned')", None),
    ("listen_on_port", "import socket; s = socket.socket(); s.bind(('0.0.0.0', 8089)); s.listen(); s.accept()", None),
    ("kill_parent", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)", None),
    ("kill_everything", "import os, signal\nfor p in range(2, 40000):\n    try: os.kill(p, signal.SIGKILL)\n    except OSError: pass", None),
    ("ignore_signals", "import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\nwhile True: pass", {"crashed", "cpu_limit", "timeout"}),
    ("recursion_bomb", "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)", None),
    ("delete_files", "import shutil\nfor p in ['README_DIR', '/usr/bin/python3', '/etc/hosts']:\n    shutil.rmtree(p, ignore_errors=True)\n    import os\n    try: os.remove(p)\n    except OSError: pass", None),
    ("spawn_shell", "import subprocess; print(subprocess.run(['sh', '-c', 'id; cat /etc/shadow; ls /root; ping -c1 1.1.1.1'], capture_output=True, text=True))", None),
    ("exit_early_to_fake_pass", "import os; os._exit(0)", None),
    ("sys_exit_zero", "raise SystemExit(0)", None),
    ("print_fake_verdict", "print('[0, true]'); print('all tests passed')", None),
    ("setuid_root", "import os; os.setuid(0)", None),
    ("chmod_and_chown", "import os\nfor p in ['/etc/passwd', '/usr/bin']:\n    try: os.chmod(p, 0o777)\n    except OSError: pass", None),
]
FAKE_PASS = {"exit_early_to_fake_pass", "sys_exit_zero"}
# without root the sandbox runs as this user with no private filesystem: these would really harm
ROOT_ONLY = {"delete_files", "kill_parent", "kill_everything", "chmod_and_chown", "fill_tmp",
             "write_canary_in_tmp"}


@pytest.fixture(scope="module")
def listener():
    """A host service on loopback that no sandboxed program may reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    received, stop = [], threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                received.append(conn.recv(100))
            except OSError:
                continue
    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], received
    stop.set()
    server.close()


@pytest.fixture(scope="module")
def pool():
    return SandboxPool(2)


@pytest.mark.parametrize("name, program, statuses", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program_is_contained(name, program, statuses, pool, listener):
    if name in ROOT_ONLY and not _is_root():
        pytest.skip("needs the root sandbox (own user and filesystem)")
    port, received = listener
    program = program.replace("PORT", str(port)).replace("README_DIR", str(README.parent))
    protected = {p: p.stat() for p in (README, Path("/etc/hosts"))}
    start = time.monotonic()
    result = pool.run(program, ["assert True"], LIMITS)
    elapsed = time.monotonic() - start
    assert elapsed < LIMITS.wall_s + 3, f"{name} was not stopped in time ({elapsed:.1f}s)"
    assert result.status in (statuses or {"ok", "timeout", "cpu_limit", "memory_limit",
                                          "output_limit", "crashed"})
    assert result.fraction in (0.0, 1.0)                # a defined reward
    if name in FAKE_PASS:
        assert result.passed == [False]                 # exiting early earns nothing
    for path, stat in protected.items():                # the host is unharmed
        assert path.exists() and path.stat().st_mtime == stat.st_mtime
    assert not Path("/etc/rewardmill-pwned").exists() and not Path("/pwned").exists()
    assert received == []                               # nothing reached the host service
    if _is_root():
        assert not CANARY.exists()                      # /tmp writes stay in the sandbox
        assert "root:" not in result.stdout             # /etc/shadow stays unread
        assert "rewardmill" not in result.stdout        # project files stay hidden
        assert "HOME" not in result.stdout or "/tmp/work" in result.stdout
        leftover = [p for p in os.listdir("/proc") if p.isdigit() and _live_uid(p) in pool.uids]
        assert leftover == [], f"{name} left processes behind"
    # and the pool still serves a normal program right after
    ok = pool.run("def f(x): return 2 * x", ["assert f(2) == 4"], LIMITS)
    assert ok.passed == [True] and ok.status == "ok"


def _live_uid(pid: str) -> int:
    """The uid of a running (not zombie) process, or -1."""
    try:
        fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
        return -1 if fields["State"].split()[0] == "Z" else int(fields["Uid"].split()[0])
    except (OSError, KeyError, ValueError):
        return -1


def test_verdicts_are_per_test_and_partial_credit_survives_a_later_hang():
    code = "def sq(x): return x * x"
    result = run(code, ["assert sq(2) == 4", "assert sq(3) == 10", "import time; time.sleep(60)",
                        "assert sq(0) == 0"], Limits(wall_s=2))
    assert result.passed == [True, False, False, False]
    assert result.status == "timeout" and result.fraction == 0.25


def test_syntax_error_and_empty_program():
    assert run("def f(:", ["assert True"]).passed == [False]
    assert run("", ["assert 1 + 1 == 2"]).passed == [True]


@pytest.mark.skipif(not _is_root(), reason="sandbox users exist only under root")
@pytest.mark.skipif(not _is_root(), reason="needs the root sandbox (own filesystem view)")
def test_a_checkout_at_an_unknown_top_level_directory_stays_hidden(tmp_path):
    """CI clones under /check, users under /data or /scratch: hiding is a whitelist, not a list
    of known places."""
    secret_dir = Path(f"/rewardmill-checkout-{os.getpid()}")
    secret_dir.mkdir()
    try:
        (secret_dir / "secret.txt").write_text("project-secret")
        os.chmod(secret_dir, 0o755)
        os.chmod(secret_dir / "secret.txt", 0o644)
        result = run(f"print(open('{secret_dir}/secret.txt').read())", ["assert True"], LIMITS)
        assert "project-secret" not in result.stdout
        assert "FileNotFoundError" in result.stderr
    finally:
        (secret_dir / "secret.txt").unlink()
        secret_dir.rmdir()


def test_two_pools_on_one_host_never_share_a_user():
    first, second = SandboxPool(2), SandboxPool(2)
    assert len(set(first.uids) | set(second.uids)) == 4
    results = [None, None]
    # a fork bomb in one pool must not starve or kill the other's programs
    bomb = threading.Thread(target=lambda: results.__setitem__(0, first.run(HOSTILE[0][1], ["assert True"], LIMITS)))
    bomb.start()
    time.sleep(0.3)
    results[1] = second.run("def f(x): return x + 1", ["assert f(1) == 2"], LIMITS)
    bomb.join()
    assert results[1].passed == [True] and results[1].status == "ok"
    first.close(), second.close()


@pytest.mark.skipif(not _is_root(), reason="sandbox users exist only under root")
def test_slot_moves_off_a_user_that_is_at_its_process_limit():
    """Processes of the slot's user that the pool did not start (another container, zombies
    nobody reaps) make exec fail with EAGAIN; the slot takes another user and still runs."""
    import subprocess
    pool = SandboxPool(1)
    [busy] = pool.uids
    hog = subprocess.Popen([Limits().python, "-c", "import threading, time\n"
                            "[threading.Thread(target=time.sleep, args=(30,)).start() for _ in range(40)]"],
                           preexec_fn=lambda: os.setuid(busy))
    try:
        time.sleep(1.0)
        result = pool.run("def f(x): return x + 1", ["assert f(1) == 2"], LIMITS)
        assert result.passed == [True] and pool.uids != [busy]
    finally:
        hog.kill()
        pool.close()


def test_pool_runs_in_parallel():
    pool = SandboxPool(2)
    start = time.monotonic()
    results = pool.map([("import time; time.sleep(1)", ["assert True"])] * 4, Limits(wall_s=5))
    assert all(r.passed == [True] for r in results)
    assert time.monotonic() - start < 3.5   # 4 one-second programs on 2 slots
