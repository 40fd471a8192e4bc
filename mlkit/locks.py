"""One writer at a time: a lock file per cache, per tuning folder and per fine-tuning run.

Two processes writing the same cache, the same `tuning/` folder or the same
fine-tuning run would overwrite each other's partial files. The first holds
an exclusive `flock` on a lock file; a second is refused at once with an error
naming the holder (pid, host, since when) and the lock file. The kernel drops
a `flock` when its process dies, however it dies, so a lock file left behind
by a killed run never blocks the next one. Where the file system has no
`flock` (some network mounts), the pid written in the file decides instead:
a holder on this host whose pid is gone is stale.

KerasTuner's chief and workers share a tuning folder by design, so only the
chief (or a process tuning alone) takes that folder's lock.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from mlkit.errors import MlkitError
from mlkit.files import READ_ONLY_ERRNOS

NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockedError(MlkitError):
    """Another live process holds the lock; the message names it and the lock file."""


@contextlib.contextmanager
def hold_lock(path, what):
    """Holds an exclusive lock on `path` for the block; refuses at once when another process holds it.

    Args:
        path: the lock file; created when missing and removed when the block ends.
        what: what the lock guards, for the error, e.g. "cache bottlenecks/x.h5".

    Raises:
        LockedError: naming the other process (pid, host, start time, command) and `path`.

    Example:
        with hold_lock(folder / ".tune-top.lock", f"tuning folder {folder}"):
            ...
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = _acquire(path, what)
    except OSError as error:
        if error.errno not in READ_ONLY_ERRNOS:
            raise
        # Where this process cannot make the lock it cannot write what the lock guards either: reading
        # (a finished cache's "up to date") needs no lock, and the first write fails with a clear error.
        yield path
        return
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                 "command": " ".join(sys.argv[:3])}) + "\n")
        handle.flush()
        yield path
    finally:
        # Unlink while still holding it: a process that opened the old file sees it is gone and retries.
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()


def _acquire(path, what):
    """The lock file, open and locked by this process (retrying when its holder removed it meanwhile)."""
    for _ in range(10):
        handle = _open_no_link(path, what)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)
            handle.close()
            raise LockedError(_held_message(path, what, holder)) from None
        except OSError as error:
            if error.errno not in NO_FLOCK:
                handle.close()
                raise
            holder = read_holder(path)
            if holder and holder_alive(holder) and holder.get("pid") != os.getpid():
                handle.close()
                raise LockedError(_held_message(path, what, holder)) from None
        if _same_file(handle, path):
            return handle
        handle.close()
    raise LockedError(f"could not take the lock {path} for {what}: other processes keep replacing it")


def _open_no_link(path, what):
    """The lock file opened for reading and writing, never through a symbolic link.

    Workspaces are often shared: a link planted at the lock's path would make
    this process overwrite whatever file it points to.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise MlkitError(f"the lock file {path} for {what} is a symbolic link; mlkit does not write through links. "
                         "Remove the link and rerun") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MlkitError(f"the lock file {path} for {what} is not a regular file; remove it and rerun")
    return os.fdopen(fd, "a+")


def _same_file(handle, path):
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.lstat(path))
    except FileNotFoundError:
        return False


def read_holder(path):
    """What the holder wrote in the lock file: {"pid", "host", "since", "command"}, or {} when unreadable."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def holder_alive(holder):
    """False only when the holder ran on this host and its pid is gone."""
    if holder.get("host") != socket.gethostname() or not holder.get("pid"):
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _held_message(path, what, holder):
    if holder.get("pid"):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        who = f"process {holder['pid']} on host {holder.get('host', '?')} (since {since}"
        who += f", {holder['command']!r})" if holder.get("command") else ")"
    else:
        who = "another process"
    return (f"{what} is being written by {who}; lock file {path}. Wait for it to finish or stop it, then rerun "
            "(a lock left by a killed process does not block)")
