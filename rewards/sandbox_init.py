"""The sandbox's launcher: isolates, then starts one model program. Stdlib only.

rewards/sandbox.py starts this file's text once per pool, with `python -I -S -B -c`, as a fork
server: it imports what isolation needs once (ctypes alone costs ~30 ms a start) and forks a
launcher per program. The host sends each job as five fds over a Unix socket: a file holding
the job as a marshal'd dict (trusted: it comes from our own process), read only in the forked
launcher, so the server never holds one program's data when it forks the next. Per program,
three processes:

  launcher (in the host's pid namespace): unshares namespaces, sets up the mounts and the
      working directory, forks the namespace's init and waits for it. On a wall-clock timeout
      the host sends it SIGTERM, and it kills the init, which as the pid namespace's init
      takes every process of the namespace with it. Should the launcher die instead, the
      init dies too (parent-death signal).
  init (pid 1 of a new pid namespace): mounts a /proc that shows only the namespace, forks
      the program, reaps orphans, and writes the program's wait status to the status fd.
  program: sets its resource limits, drops to the sandbox user, and runs the job's script
      in its own copy of the server's interpreter (no exec: see run_script).

Modes (job["mode"]):
  "root":   as root; namespaces without a user namespace; the program runs as job["uid"].
  "userns": an unprivileged user namespace (as root: after first becoming job["uid"]); the
            program runs as an unprivileged user inside it and has no capabilities.
  "none":   no isolation at all, only resource limits (allowed only when the user asks).

Status lines (status fd): "exit N" | "signal N" | "setup-error TEXT".
"""
import atexit
import ctypes
import fcntl
import marshal
import os
import resource
import select
import _signal as signal   # the C module (the program gets `signal` if it imports it)
import sys
import threading
import traceback

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
LINUX_CAPABILITY_VERSION_3, errno_EINVAL = 0x20080522, 22
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
INNER_UID = 1000   # the program's uid inside a user namespace (never 0: no capabilities)

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class SetupError(Exception):
    pass


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    check(libc.mount(source.encode() if source else None, target.encode(),
                     fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                     data.encode() if data else None), f"mount {fstype or source} on {target}")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def read_only_everywhere():
    """Every mount the program can see becomes read-only (mount_setattr, Linux >= 5.12): the
    sandbox user may own files somewhere (its own checkout, as non-root)."""
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, attr, 32) != 0:
        err = ctypes.get_errno()
        raise SetupError(f"mount_setattr(read-only): {os.strerror(err)}")


def isolate(job):
    """Namespaces and mounts, in the launcher (before the init is forked)."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if job["mode"] == "userns":
        if os.geteuid() == 0:          # never map real root into the namespace
            become(job["uid"])
            libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)   # setuid cleared it: /proc/self/*_map
        uid, gid = os.geteuid(), os.getegid()
        check(libc.unshare(flags | CLONE_NEWUSER), "unshare(user, mount, net, pid namespaces)")
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", f"{INNER_UID} {uid} 1")
        write("/proc/self/gid_map", f"{INNER_UID} {gid} 1")
    else:
        check(libc.unshare(flags), "unshare(mount, net, pid namespaces)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for path in job["hidden"]:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=755")
    read_only_everywhere()
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={job['disk_mb']}m,mode=1777")


def become(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def drop_bounding_capabilities():
    """No capability can ever come back (needs CAP_SETPCAP: as root, or in our user namespace)."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno_EINVAL:
            break   # past the last capability this kernel knows
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")


def clear_capabilities():
    """Empty effective, permitted and inheritable sets. An exec would have cleared them for a
    non-root user; the program is not exec'd, and in a user namespace the launcher holds every
    capability there (with which a program could unmount what hides the host's files)."""
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "capset(none)")


def write_files(job):
    os.makedirs(job["workdir"], exist_ok=True)
    for name, data in job["files"].items():
        with open(os.path.join(job["workdir"], name), "wb") as f:
            f.write(data)
    if job["mode"] == "root":
        for name in ["", *job["files"]]:
            os.chown(os.path.join(job["workdir"], name), job["uid"], job["uid"])


def start_program(job, status_fd):
    """In the forked program: limits, user, fds, then the job's script. Never returns."""
    try:
        for name, value in job["rlimits"]:
            resource.setrlimit(name, (value, value))
        # SIGXCPU at the soft CPU limit, SIGKILL a second later if the program ignores it
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"] + 1))
        if job["mode"] != "none":
            drop_bounding_capabilities()
        if job["mode"] == "root":
            become(job["uid"])
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)   # no setuid binaries, no file capabilities
        if job["mode"] != "none":
            clear_capabilities()
        os.chdir(job["workdir"])
        os.dup2(os.open(job["stdin"], os.O_RDONLY), 0)
        os.dup2(job["report_fd"], 3)
        os.closerange(4, status_fd)
        os.closerange(status_fd + 1, 1 << 16)
    except (SetupError, OSError) as err:
        os.write(status_fd, f"setup-error {err}\n".encode())
        os._exit(127)
    os.close(status_fd)   # only the init reports how the program ended
    run_script(job["script"], job["env"])


def run_script(path, env):
    """Run `path` as `python -I -S -B path` would, in this interpreter (forked from the server,
    which never held another job's data): a fresh interpreter costs ~25 ms a program, the
    fork under 1 ms. Ends the process with the exit status the interpreter would give."""
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [path]
    # new stdio objects over fds 0-2, as a fresh interpreter makes them (block-buffered files)
    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                      buffering=1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # a fresh __main__ module, as the interpreter makes for a script (the server's own, with
    # the launcher's functions, is no longer sys.modules["__main__"])
    main = sys.modules["__main__"] = type(sys)("__main__")
    main.__file__, main.__builtins__ = path, __builtins__
    code = 0
    try:
        with open(path, "rb") as f:
            source = f.read()
        exec(compile(source, path, "exec"), main.__dict__)
    except SystemExit as stop:
        code = exit_code(stop.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    # what the interpreter does at exit: wait for non-daemon threads, atexit, flush stdio
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = 120   # as CPython, when flushing stdio at exit fails
    os._exit(code)


def exit_code(value):
    """The status SystemExit(value) ends an interpreter with."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    try:
        print(value, file=sys.stderr)
    except BaseException:
        pass
    return 1


def run_init(job, status_fd, lifeline):
    """pid 1 of the new namespace: its exit kills every process left in it."""
    if job["mode"] != "none":
        os.setsid()   # out of the launcher's process group: kill(0) cannot reach it
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([lifeline], [], [], 0)[0]:   # the launcher died before the line above
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # as init, ignore what the program sends
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)        # and keep it out of our /proc entries
    if job["mode"] != "none":
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except SetupError:   # /proc partly masked (some containers): no /proc at all
            mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k")
    program = os.fork()
    if program == 0:
        start_program(job, status_fd)
    while True:
        pid, status = os.wait()
        if pid == program:
            break
    text = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
        f"exit {os.waitstatus_to_exitcode(status)}"
    os.write(status_fd, (text + "\n").encode())
    os._exit(0)


def launch(fds):
    """In a child the server forked for one job: the launcher. fds: the job (a marshal'd dict),
    the program's stdout, stderr, report (fd 3) and status files. Never returns."""
    job_fd, out_fd, err_fd, report_fd, status_fd = fds
    os.setsid()   # its own process group: the host kills what a run left behind by group
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.lseek(job_fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(job_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    job = marshal.loads(b"".join(chunks))
    # move the host's fds above those the program uses (0-3); status_fd closes on exec
    status = fcntl.fcntl(status_fd, fcntl.F_DUPFD_CLOEXEC, 1000)
    job["report_fd"] = fcntl.fcntl(report_fd, fcntl.F_DUPFD, 900)
    for fd in fds:
        os.close(fd)
    try:
        if job["mode"] != "none":
            isolate(job)
        write_files(job)
    except (SetupError, OSError) as err:
        os.write(status, f"setup-error {err}\n".encode())
        os._exit(1)
    lifeline, alive = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(alive)
        run_init(job, status, lifeline)
    os.close(lifeline)
    # SIGTERM (the host's wall-clock limit): kill the init and wait, so that when we exit
    # every process of the namespace is gone (the init's exit waits for them all)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGKILL))
    os.waitpid(init, 0)
    os._exit(0)


def reap(*_):
    """SIGCHLD: collect exited launchers (a zombie launcher of a sandbox user counts against
    that user's process limit)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(sock):
    """The fork server: per request (a message with the job's five fds attached) fork a
    launcher and answer with its pid, and a pidfd the host waits on and signals (a pidfd never
    names a reused pid). Exits when the host closes its end."""
    import socket
    signal.signal(signal.SIGCHLD, reap)
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 16, 5)
        if not msg:
            os._exit(0)
        # no reaping between fork and pidfd_open: the pidfd must name this child
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            sock.close()
            launch(fds)
        pidfd = os.pidfd_open(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        for fd in fds:
            os.close(fd)
        socket.send_fds(sock, [str(pid).encode()], [pidfd])
        os.close(pidfd)


def main():
    import socket
    serve(socket.socket(fileno=int(sys.argv[1])))


main()
