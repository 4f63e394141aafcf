"""Hostile programs against the code sandbox: containment and forged verdicts. Stdlib only.

    python tests/sandbox_battery.py [ASSET_DIR]    # last line: {"isolation": ..., "problems": {case: [...]}}

tests/test_sandbox_battery.py runs every case in-process and, when the suite runs as root,
the whole battery again as an unprivileged user (user namespaces instead of sandbox users).
A case passes when `problems` lists nothing for it.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.sandbox import Limits, SandboxPool, _is_root  # noqa: E402

LIMITS = Limits(wall_s=3, cpu_s=1, memory_mb=256)   # 1 CPU s: under a 2x load still < wall_s
SECRET = "rewardmill-battery-secret-7f3a"   # in a host file and in the host's environment
DAEMON_MARK = "3600.4242"                   # a daemon's argument, to find it afterwards
TESTS = ["assert f(2) == 4"]                # what the containment programs are graded on
try:
    SHADOW = Path("/etc/shadow").read_text().splitlines()[0]   # readable as root only
except OSError:
    SHADOW = None

# (name, program, statuses it may end with: None = any defined one). Placeholders: PORT (a
# host listener on loopback), ASSET (a host directory the running user owns), CANARY (a path
# in the host's /tmp), MARK (DAEMON_MARK).
CONTAINMENT = [
    ("fork_bomb", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", None),
    ("fork_bomb_detached", "import os\nwhile True:\n    try:\n        if os.fork() == 0: os.setsid()\n    except OSError: pass", None),
    ("thread_bomb", "import threading, time\nwhile True:\n    try: threading.Thread(target=time.sleep, args=(60,)).start()\n    except RuntimeError: pass", None),
    ("process_limit", "import os, time\nn = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n            time.sleep(5); os._exit(0)\n        n += 1\n    except OSError: break\nprint('forked', n)", None),
    ("memory_bomb", "x = []\nwhile True: x.append(bytearray(10**7))", {"memory_limit", "crashed", "cpu_limit"}),
    ("one_huge_allocation", "x = bytearray(10**11)", {"memory_limit"}),
    ("infinite_loop", "while True: pass", {"cpu_limit"}),
    ("sleep_forever", "import time; time.sleep(3600)", {"timeout"}),
    ("busy_children", "import subprocess\n[subprocess.Popen(['sleep', '3600']) for _ in range(4)]\nwhile True: pass", None),
    ("daemon_outlives_run", "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0: os.execv('/bin/sleep', ['sleep', 'MARK'])\n    os._exit(0)", None),
    ("huge_stdout", "import sys\nwhile True: sys.stdout.write('x' * 65536)", {"output_limit"}),
    ("huge_stderr", "import sys\nwhile True: sys.stderr.write('y' * 65536)", {"output_limit"}),
    ("huge_file", "f = open('big.bin', 'wb')\nwhile True: f.write(b'0' * 2**20)", {"output_limit"}),
    ("fill_tmp", "import os\nfor i in range(10**6): open(f'/tmp/f{i}', 'wb').write(b'0' * 2**20)", None),
    ("write_outside_workdir", "for p in ['/etc/rewardmill-pwned', '/usr/pwned', '/var/pwned', '/pwned', 'ASSET/pwned', 'ASSET/secret.txt']:\n    try: open(p, 'w').write('x')\n    except OSError: pass", None),
    ("write_canary_in_tmp", "open('CANARY', 'w').write('pwned')", None),
    ("read_shadow", "print(open('/etc/shadow').read())", None),
    ("read_asset", "print(open('ASSET/secret.txt').read())", None),
    ("read_project_files", "import glob\nfor p in glob.glob('/*/*/README.md') + glob.glob('/*/README.md') + glob.glob('/*/*/*/README.md'):\n    print(open(p).read())", None),
    ("read_root_home", "import os; print(os.listdir('/root'))", None),
    ("read_host_environment", "import os\nprint(dict(os.environ))\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try: print(open(f'/proc/{p}/environ').read())\n        except OSError: pass", None),
    ("read_parent_environment", "import os\nfor p in (os.getppid(), 1):\n    try: print(open(f'/proc/{p}/environ').read())\n    except OSError: pass", None),
    ("list_host_processes", "import os\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try: print(open(f'/proc/{p}/cmdline').read())\n        except OSError: pass", None),
    ("open_socket_outbound", "import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)", None),
    ("open_socket_loopback", "import socket; socket.create_connection(('127.0.0.1', PORT), timeout=2).send(b'pwned')", None),
    ("listen_on_port", "import socket; s = socket.socket(); s.bind(('0.0.0.0', 8089)); s.listen(); s.accept()", None),
    ("kill_parent", "import os, signal\nfor p in (os.getppid(), 0, -1):\n    try: os.kill(p, signal.SIGKILL)\n    except OSError: pass", None),
    ("kill_everything", "import os, signal\nfor p in range(2, 40000):\n    try: os.kill(p, signal.SIGKILL)\n    except OSError: pass", None),
    ("ignore_signals", "import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\nwhile True: pass", {"crashed", "cpu_limit", "timeout"}),
    ("recursion_bomb", "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)", None),
    ("delete_files", "import os, shutil\nfor p in ['ASSET', '/usr/bin/python3', '/etc/hosts']:\n    shutil.rmtree(p, ignore_errors=True)\n    try: os.remove(p)\n    except OSError: pass", None),
    ("spawn_shell", "import subprocess; print(subprocess.run(['sh', '-c', 'id; cat /etc/shadow; ls /root; cat ASSET/secret.txt'], capture_output=True, text=True))", None),
    ("setuid_root", "import os; os.setuid(0)", None),
    ("chmod_and_chown", "import os\nfor p in ['/etc/passwd', '/usr/bin', 'ASSET', 'ASSET/secret.txt']:\n    try: os.chmod(p, 0o777)\n    except OSError: pass\n    try: os.chown(p, 0, 0)\n    except OSError: pass", None),
    ("capabilities", "print(open('/proc/self/status').read())", None),
    ("unmount_the_cover", "import ctypes\nlibc = ctypes.CDLL(None)\nfor p in ('/' + 'ASSET'.strip('/').split('/')[0], 'ASSET'):\n    libc.umount2(p.encode(), 2)\nprint(open('ASSET/secret.txt').read())", None),
    ("remount_writable", "import ctypes\nlibc = ctypes.CDLL(None)\nfor t in [b'/', b'/usr', b'/tmp', b'/proc']:\n    libc.umount2(t, 2)\n    libc.mount(None, t, None, 32, None)\nopen('/usr/pwned', 'w').write('x')", None),
]

# (name, program, tests): generic ways to pass tests without computing the answers. Every
# test must fail. The expected values (987654321, ...) never enter the sandbox. (A program
# can still claim any value for a probe, as an honest one could return it; so a test that
# only checks truthiness, `assert is_prime(7)`, is as strong as the negatives beside it.)
FORGERIES = [
    ("always_equal_object", "class E:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n    __hash__ = lambda s: 0\ndef f(x): return E()",
     ["assert f(9) == 987654321", "assert f(1) != 5"]),
    ("always_equal_int_subclass", "class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\ndef f(x): return I(0)",
     ["assert f(9) == 987654321"]),
    ("always_equal_str_subclass", "class S(str):\n    __eq__ = lambda s, o: True\n    __hash__ = str.__hash__\ndef f(x): return S('')",
     ["assert f(9) == 'expected-secret'"]),
    ("exit_early", "import os; os._exit(0)", ["assert f(9) == 987654321"]),
    ("sys_exit_zero", "raise SystemExit(0)", ["assert f(9) == 987654321"]),
    ("exit_inside_the_call", "import os\ndef f(x): os._exit(0)", ["assert f(9) == 987654321"]),
    ("raise_inside_the_call", "def f(x): raise SystemExit(0)", ["assert f(9) == 987654321"]),
    ("patch_assertion_error", "import builtins\nbuiltins.AssertionError = type('Nothing', (Exception,), {})\ndef f(x): return 0",
     ["assert f(9) == 987654321"]),
    ("print_fake_verdicts", "print('[0, true]'); print('all tests passed'); print('0 987654321')\ndef f(x): return 0",
     ["assert f(9) == 987654321"]),
    ("report_many_guesses", "import os\nfor i in range(2):\n    for guess in range(-500, 500): os.write(3, f'{i} {guess}\\n'.encode())\n    os.write(3, f'{i} True\\n'.encode())\nos._exit(0)",
     ["assert f(9) == 987654321", "assert f(1) == 42"]),
    ("report_once_then_exit", "import os\nos.write(3, b'0 1\\n')\nos._exit(0)", ["assert f(9) == 987654321"]),
    ("clear_the_probe_list", "import gc\nfor o in gc.get_objects():\n    if isinstance(o, list) and o and all(isinstance(x, str) and '(' in x for x in o): o.clear()\ndef f(x): return 0",
     ["assert f(9) == 987654321"]),
    ("rewrite_probes_to_true", "import gc\nfor o in gc.get_objects():\n    if isinstance(o, list) and o and all(isinstance(x, str) and '(' in x for x in o): o[:] = ['True'] * len(o)\ndef f(x): return 0",
     ["assert f(9) == 987654321", "assert f(2) == 'expected-secret'"]),
    ("walk_frames_for_the_runner", "import sys\nframe = sys._getframe()\nwhile frame:\n    g = frame.f_globals\n    for k in list(g):\n        if k.startswith('_') and callable(g[k]): g[k] = lambda *a, **k: 'True'\n    frame = frame.f_back\ndef f(x): return 0",
     ["assert f(9) == 987654321"]),
    ("patch_repr_and_eval", "import builtins\nbuiltins.repr = lambda v: 'True'\nbuiltins.eval = lambda *a: True\ndef f(x): return 0",
     ["assert f(9) == 987654321", "assert f(3) == [9, 8, 7]"]),
    ("hunt_for_expected_values", "import os\nseen = ''\nfor root in ['.', '/tmp', '/proc/self', '/proc/1']:\n    for dirpath, dirs, files in os.walk(root):\n        for name in files:\n            try: seen += open(os.path.join(dirpath, name), errors='replace').read(100000)\n            except Exception: pass\n        if dirpath.count('/') > 3: dirs.clear()\nprint('FOUND' if '98765' + '4321' in seen else 'nothing')\ndef f(x): return 0",
     ["assert f(9) == 987654321"]),
    ("deep_literal_in_report", "import os\nos.write(3, b'0 ' + b'[' * 200000 + b']' * 200000 + b'\\n')\nos._exit(0)", ["assert f(9) == 987654321"]),
    ("huge_value", "def f(x): return [7] * 10**7", ["assert f(9) == [987654321]"]),
    ("nan_value", "def f(x): return float('nan')", ["assert f(9) == 987654321", "assert not f(2) != 987654321"]),
    ("stdio_prints_nothing", "import os; os._exit(0)", [{"input": "3 4\n", "output": "987654321\n"}]),
    ("stdio_hunts_for_output", "import os, sys\nprint(sys.stdin.read())\nfor p in os.listdir('.'): print(open(p).read())",
     [{"input": "3 4\n", "output": "987654321\n"}]),
]


class Host:
    """What the programs must not reach: a loopback listener, a directory the running user
    owns (outside /tmp), a canary path in the host's /tmp, a secret in our environment."""

    def __init__(self, asset_dir: str | None = None):
        self.owns_asset = asset_dir is None
        if asset_dir is None:   # outside /tmp where we can: a checkout can live anywhere
            asset_dir = f"/rewardmill-battery-{os.getpid()}" if _is_root() else tempfile.mkdtemp()
            os.makedirs(asset_dir, exist_ok=True)
        self.asset = Path(asset_dir)
        (self.asset / "secret.txt").write_text(SECRET)
        self.canary = Path(tempfile.gettempdir()) / f"rewardmill-canary-{os.getpid()}.txt"
        os.environ["REWARDMILL_BATTERY_SECRET"] = SECRET
        self.received: list[bytes] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
                self.received.append(conn.recv(100) or b"(connected)")
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        if self.owns_asset:
            shutil.rmtree(self.asset, ignore_errors=True)

    def fill(self, program: str) -> str:
        return (program.replace("PORT", str(self.port)).replace("ASSET", str(self.asset))
                .replace("CANARY", str(self.canary)).replace("MARK", DAEMON_MARK))

    def protected(self) -> dict:
        paths = [self.asset, self.asset / "secret.txt", Path("/etc/hosts"), Path("/etc/passwd"),
                 Path("/usr/bin"), Path(os.path.realpath(LIMITS.python))]
        return {p: (p.stat().st_mtime, p.stat().st_mode, p.stat().st_uid) if p.exists() else None
                for p in paths}


def check_containment(pool: SandboxPool, host: Host, name: str, program: str, statuses) -> list[str]:
    problems = []
    before = host.protected()
    start = time.monotonic()
    result = pool.run(host.fill(program), TESTS, LIMITS)
    elapsed = time.monotonic() - start
    if elapsed > LIMITS.wall_s + 3:
        problems.append(f"not stopped in time ({elapsed:.1f}s)")
    if result.status not in (statuses or {"ok", "timeout", "cpu_limit", "memory_limit",
                                          "output_limit", "crashed"}):
        problems.append(f"status {result.status}")
    if result.passed != [False]:
        problems.append(f"passed a test it cannot pass: {result.passed}")
    if host.protected() != before:
        problems.append("a host file was changed")
    for path in ("/etc/rewardmill-pwned", "/pwned", "/usr/pwned", str(host.asset / "pwned"),
                 str(host.canary)):
        if os.path.exists(path):
            problems.append(f"wrote {path}")
            os.remove(path) if os.path.isfile(path) else None
    if host.received:
        problems.append(f"reached the host's listener: {host.received}")
        host.received.clear()
    output = result.stdout + result.stderr
    for leak, what in ((SECRET, "a host secret"), (SHADOW, "/etc/shadow"),
                       ("rewardmill is a Ray-based", "the project's files")):
        if leak and leak in output:
            problems.append(f"read {what}")
    if name == "process_limit" and "forked" in result.stdout:
        forked = int(result.stdout.split("forked")[1].split()[0])
        if forked >= LIMITS.processes:
            problems.append(f"forked {forked} processes, limit {LIMITS.processes}")
    if name == "capabilities":
        caps = [line.split()[1] for line in result.stdout.splitlines()
                if line.startswith(("CapPrm", "CapEff", "CapAmb"))]
        if len(caps) != 3 or any(int(c, 16) for c in caps):
            problems.append(f"the program holds capabilities: {caps}")
    problems += leftovers(pool)
    ok = pool.run("def f(x): return 2 * x", TESTS, LIMITS)   # and the pool still serves
    if ok.passed != [True] or ok.status != "ok":
        problems.append(f"the pool stopped serving: {ok}")
    return problems


def leftovers(pool: SandboxPool) -> list[str]:
    """Processes a program left behind: the daemon (found by its argument) or any process of
    the pool's sandbox users."""
    time.sleep(0.05)
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        alive = fields.get("State", "Z").split()[0] != "Z"
        if alive and (DAEMON_MARK.encode() in cmdline or int(fields["Uid"].split()[0]) in pool.uids):
            found.append(f"left process {pid} running: {cmdline[:80]!r}")
    return found


def check_forgery(pool: SandboxPool, program: str, tests: list) -> list[str]:
    result = pool.run(program, tests, LIMITS)
    problems = [f"test {i} passed: {tests[i]!r}" for i, ok in enumerate(result.passed) if ok]
    if "FOUND" in result.stdout:
        problems.append("found an expected value inside the sandbox")
    return problems


def run_all(asset_dir: str | None = None) -> dict:
    host, pool = Host(asset_dir), SandboxPool(2)
    problems = {}
    try:
        for name, program, statuses in CONTAINMENT:
            problems[name] = check_containment(pool, host, name, program, statuses)
        for name, program, tests in FORGERIES:
            problems[name] = check_forgery(pool, program, tests)
    finally:
        host.close()
        pool.close()
    return {"isolation": pool.isolation.mode, "user": os.geteuid(), "problems": problems}


if __name__ == "__main__":
    print(json.dumps(run_all(sys.argv[1] if len(sys.argv) > 1 else None)), flush=True)
