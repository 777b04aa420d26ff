"""Linux namespace plumbing for the test network (TestNet in tests/e2e/harness.py).

Namespaces and capabilities belong to a thread, and a process inherits them from the thread
that starts it. So each step runs in a short-lived thread of its own (`in_thread`) while the
test process stays where it is, and `ip` keeps CAP_NET_ADMIN even for a user whose capabilities
are those of a user namespace of their own (`enter_own_network`): one path for root and others.

Every session that builds the test network first moves into a network of its own
(`enter_own_network`), so sessions at once (someone else's on the same machine, or the workers of
`pytest -n`) never share the TEST-NET subnets or a loopback port, and none waits for another.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 47, 2


class NamespaceError(RuntimeError):
    """A namespace step failed; the message carries the real cause (ip's own words)."""


def in_thread[T](step: Callable[[], T], netns: int | None = None) -> T:
    """`step()` in a new thread, inside network namespace `netns` (an open descriptor) if given."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            if netns is not None:
                os.setns(netns, os.CLONE_NEWNET)
            result.append(step())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def new_netns() -> int:
    """A new, empty network namespace, alive while the returned descriptor is open: nothing to
    name or remove, and nothing left behind when the test process dies."""

    def create() -> int:
        try:
            os.unshare(os.CLONE_NEWNET)
        except OSError as exc:  # e.g. root without CAP_SYS_ADMIN in a container
            raise NamespaceError(f"cannot make a network namespace: {exc}") from exc
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY)

    return in_thread(create)


def ip(*args: str, netns: int | None = None, pass_fds: Iterable[int] = ()) -> None:
    """`ip ARGS` (in network namespace `netns`); NamespaceError with ip's message if it fails."""

    def run() -> subprocess.CompletedProcess[str]:
        _keep_net_admin_across_exec()
        return subprocess.run(["ip", *args], capture_output=True, text=True, pass_fds=tuple(pass_fds))

    done = in_thread(run, netns)
    if done.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {' '.join(done.stderr.split()) or done.returncode}")


def _keep_net_admin_across_exec() -> None:
    """Make CAP_NET_ADMIN ambient in this thread: a process that is not uid 0 (in its user
    namespace) keeps only its ambient capabilities across exec (capabilities(7))."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)  # 0: this thread
    sets = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; capabilities 0-31, then 32-63
    if _libc.capget(header, sets) == 0:
        sets[2] |= 1 << _CAP_NET_ADMIN  # an ambient capability must be inheritable too
        if _libc.capset(header, sets) == 0 and _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE,
                                                          _CAP_NET_ADMIN, 0, 0) == 0:
            return
    raise NamespaceError(f"cannot keep CAP_NET_ADMIN for ip: {os.strerror(ctypes.get_errno())}")


def enter_own_network() -> None:
    """Move this process into a new network namespace (loopback up) that it may configure; a
    process that is not root first moves into a new user namespace, as the same uid and gid but
    with every capability there.

    Call it from the thread that runs the tests (a namespace belongs to a thread; the threads and
    processes it starts later inherit it). A new user namespace is allowed only while the process
    has a single thread, and neither step can be undone: `fails_in_child` tries it first.
    """
    if os.geteuid() == 0:
        os.unshare(os.CLONE_NEWNET)
    else:
        uid, gid = os.getuid(), os.getgid()
        os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNET)
        Path("/proc/self/setgroups").write_text("deny")  # required before an unprivileged gid_map
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    ip("link", "set", "lo", "up")


def fails_in_child(step: Callable[[], None]) -> str | None:
    """Why `step` fails in a forked child of this process, or None if it succeeds there."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            step()
        except BaseException as exc:
            os.write(write_end, (str(exc) or type(exc).__name__).encode())
        os._exit(0)
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        error = pipe.read().decode()
    os.waitpid(pid, 0)
    return error or None


def userns_advice() -> str:
    """How to get unprivileged user namespaces here: the sysctl that forbids them, if one does."""
    for name, forbids, allows in (("kernel.unprivileged_userns_clone", "0", "1"),
                                  ("user.max_user_namespaces", "0", "15000"),
                                  ("kernel.apparmor_restrict_unprivileged_userns", "1", "0")):
        setting = Path("/proc/sys", *name.split("."))
        if setting.exists() and setting.read_text().strip() == forbids:
            return f"{name} is {forbids}: `sudo sysctl -w {name}={allows}` allows them, or run as root"
    return "run as root, or where unprivileged user namespaces are allowed (most containers forbid them)"
