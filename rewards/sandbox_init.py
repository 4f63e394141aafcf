"""The sandbox's launcher: isolates, then starts one model program. Stdlib only.

rewards/sandbox.py runs this file's text with `python -I -S -B -c`, and writes the job to its
stdin as a marshal'd dict (trusted: it comes from our own process). Three processes:

  launcher (in the host's pid namespace): unshares namespaces, sets up the mounts and the
      working directory, forks the namespace's init and waits for it. On a wall-clock timeout
      the host sends it SIGTERM, and it kills the init, which as the pid namespace's init
      takes every process of the namespace with it. Should the launcher die instead, the
      init dies too (parent-death signal).
  init (pid 1 of a new pid namespace): mounts a /proc that shows only the namespace, forks
      the program, reaps orphans, and writes the program's wait status to the status fd.
  program: sets its resource limits, drops to the sandbox user, and execs the job's argv.

Modes (job["mode"]):
  "root":   as root; namespaces without a user namespace; the program runs as job["uid"].
  "userns": an unprivileged user namespace (as root: after first becoming job["uid"]); the
            program runs as an unprivileged user inside it and has no capabilities.
  "none":   no isolation at all, only resource limits (allowed only when the user asks).

Status lines (status fd): "exit N" | "signal N" | "exec-error ERRNO" | "setup-error TEXT".
"""
import ctypes
import fcntl
import marshal
import os
import resource
import select
import _signal as signal   # the C module: `signal` imports enum (~5 ms a start)
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
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


def write_files(job):
    os.makedirs(job["workdir"], exist_ok=True)
    for name, data in job["files"].items():
        with open(os.path.join(job["workdir"], name), "wb") as f:
            f.write(data)
    if job["mode"] == "root":
        for name in ["", *job["files"]]:
            os.chown(os.path.join(job["workdir"], name), job["uid"], job["uid"])


def start_program(job, status_fd):
    """In the forked program: limits, user, fds, exec. Never returns."""
    try:
        for name, value in job["rlimits"]:
            resource.setrlimit(name, (value, value))
        # SIGXCPU at the soft CPU limit, SIGKILL a second later if the program ignores it
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"] + 1))
        if job["mode"] == "root":
            become(job["uid"])
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)   # no setuid binaries, no file capabilities
        os.chdir(job["workdir"])
        os.dup2(os.open(job["stdin"], os.O_RDONLY), 0)
        os.dup2(job["report_fd"], 3)
        os.closerange(4, status_fd)             # status_fd itself closes on exec
        os.closerange(status_fd + 1, 1 << 16)
        os.execve(job["argv"][0], job["argv"], job["env"])
    except OSError as err:
        os.write(status_fd, f"exec-error {err.errno}\n".encode())
    os._exit(127)


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


def main():
    job = marshal.loads(sys.stdin.buffer.read())
    # move the host's fds above those the program uses (0-3); status_fd closes on exec
    status_fd = fcntl.fcntl(job["status_fd"], fcntl.F_DUPFD_CLOEXEC, 1000)
    job["report_fd"] = fcntl.fcntl(job["report_fd"], fcntl.F_DUPFD, 900)
    os.close(job.pop("status_fd"))
    try:
        if job["mode"] != "none":
            isolate(job)
        write_files(job)
    except (SetupError, OSError) as err:
        os.write(status_fd, f"setup-error {err}\n".encode())
        os._exit(1)
    lifeline, alive = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(alive)
        run_init(job, status_fd, lifeline)
    os.close(lifeline)
    # SIGTERM (the host's wall-clock limit): kill the init and wait, so that when we exit
    # every process of the namespace is gone (the init's exit waits for them all)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGKILL))
    os.waitpid(init, 0)
    os._exit(0)


main()
