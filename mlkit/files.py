"""Writing the workspace's files: atomic replacement, full disks, and the stage folders.

Every file a stage finishes is written under a temporary name in its own
folder and renamed over the real name, so a reader, or a rerun after a crash,
sees either the old file or the new one. When a write fails, the temporary
file is removed, and a full disk becomes one `DiskFullError` that says where
and how much to free; what earlier steps finished stays on disk, so the same
command resumes once there is room.
"""

import contextlib
import errno
import glob
import json
import math
import os
import re
import shutil
from pathlib import Path

from mlkit.errors import MlkitError

# A file or folder argument: a str or any os.PathLike (pathlib.Path), as `open` takes.
StrPath = str | os.PathLike[str]

MB = 1 << 20
# The one temporary-name convention for files written in place of another (`temporary_path`).
TEMPORARY_PREFIX = ".partial-"
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# HDF5 reports a failed write inside its own message, e.g. "errno = 28, error message = 'No space left on device'".
HDF5_FULL = re.compile(r"errno = ({})\b|No space left on device|Disk quota exceeded".format("|".join(map(str, FULL_ERRNOS))))
HDF5_FILENAME = re.compile(r"filename = '([^']+)'")


class DiskFullError(MlkitError):
    """No space left while writing one of the workspace's files.

    Args:
        path: the file being written.
        need: bytes the write needed, when known; the message asks to free
            what is missing of it (at least 1 MB). Defaults to None.
    """

    def __init__(self, path, need=None):
        self.path = Path(path)
        folder = existing_folder(self.path)
        free = shutil.disk_usage(folder).free if folder else 0
        missing = max(int(need or 0) - free, MB)
        self.free_mb = math.ceil(missing / MB)
        self.errno = errno.ENOSPC
        super().__init__(f"no space left on {device_name(folder or self.path)} while writing {self.path}; "
                         f"free at least {self.free_mb} MB and rerun: finished work is kept")


READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def read_only_error(error):
    """A one-line MlkitError when `error` is a write refused by permissions or a read-only mount, else None."""
    if not isinstance(error, OSError) or error.errno not in READ_ONLY_ERRNOS:
        return None
    where = error.filename or "a file"
    why = "the file system is read-only" if error.errno == errno.EROFS else "permission denied"
    return MlkitError(f"cannot write {where}: {why}. Use a folder you can write to (--workdir, or a copy of the "
                      "manifest's folder); finished work elsewhere is kept")


def existing_folder(path):
    """The nearest folder of `path` (itself or a parent) that exists, or None."""
    for folder in (Path(path), *Path(path).parents):
        if folder.is_dir():
            return folder
    return None


def device_name(path):
    """The mount point holding `path` and its device, e.g. "/data (/dev/sdb1)"."""
    mount = Path(os.path.abspath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        with open("/proc/self/mounts") as handle:
            devices = {fields[1]: fields[0] for fields in (line.split() for line in handle) if len(fields) > 1}
    except OSError:
        devices = {}
    device = devices.get(str(mount))
    return f"{mount} ({device})" if device else str(mount)


def disk_full_error(error, path=None, need=None):
    """A `DiskFullError` when `error` (or what it was raised from) is a full disk, else None.

    h5py reports full disks as OSError, RuntimeError or ValueError carrying
    HDF5's message, and KerasTuner wraps errors in its own; both are
    recognised. The file named in the error wins over `path`.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return error
        text = str(error)
        if getattr(error, "errno", None) in FULL_ERRNOS or HDF5_FULL.search(text):
            hdf5_name = HDF5_FILENAME.search(text)
            named = getattr(error, "filename", None) or (hdf5_name.group(1) if hdf5_name else None)
            if named or path:
                return DiskFullError(named or path, need)
        error = error.__cause__ or error.__context__
    return None


def close_hdf5(path):
    """Closes HDF5 handles left open on `path` by a failed write (Keras's save_weights leaves one).

    A handle left open tries to flush when Python exits; on a full disk that
    crashed the process with a segmentation fault. Closing it can fail for the
    same reason, which no longer matters once the file is deleted.
    """
    import sys

    if "h5py" not in sys.modules:
        return
    import h5py

    target = os.path.abspath(path)
    for handle in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            name = os.path.abspath(os.fsdecode(handle.name))
        except Exception:
            continue
        if name == target:
            with contextlib.suppress(Exception):
                h5py.File(handle).close()


def temporary_path(path):
    """Where `atomic_path` writes `path` first: a hidden, per-process name in the same folder.

    The name keeps the file's suffix, which Keras checks.
    """
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")


def is_temporary(path):
    """True for a file `atomic_path` (or `atomic_folder`) is still writing, or a killed writer left.

    Such a file may hold a whole, valid-looking result that was never
    published; no reader may take it for one.
    """
    name = Path(path).name
    pid, _, rest = name[len(TEMPORARY_PREFIX):].partition("-")
    return name.startswith(TEMPORARY_PREFIX) and pid.isdigit() and bool(rest)


def remove_stale_temporaries(path):
    """Removes temporary files (or folders) of `path` that killed writers left (a SIGKILL skips every clean-up).

    Call it only while holding the lock that guards `path`: a live writer's
    temporary file has the same form. A cache's temporary file is as large as
    the cache, so leaving one per killed run would fill the disk.
    """
    path = Path(path)
    for tmp in path.parent.glob(f"{TEMPORARY_PREFIX}*-{glob.escape(path.name)}"):
        # Only "<prefix><pid>-<name>": the glob also matches another file whose name ends in "-<name>".
        if tmp.name[len(TEMPORARY_PREFIX):-len(path.name) - 1].isdigit():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def sweep_temporaries(folder, names=None):
    """Removes the temporaries that killed writers left in `folder`; returns how many.

    Call it only while holding the lock that guards what the temporaries
    stand for (a live writer's temporary has the same form). Temporaries of
    processes alive on this host are kept all the same: a lock guards one
    run, while a stage folder holds many.

    Args:
        folder: a stage folder (tuning/, models/).
        names: when given, only temporaries of these file names are removed. Defaults to None (all).
    """
    removed = 0
    for tmp in Path(folder).glob(f"{TEMPORARY_PREFIX}*"):
        pid, _, name = tmp.name[len(TEMPORARY_PREFIX):].partition("-")
        if not is_temporary(tmp) or (names is not None and name not in names) or _alive(int(pid)):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


@contextlib.contextmanager
def scratch_folder(purpose):
    """A folder in the system temp dir for the block, removed after it; removes those killed runs left.

    Its name holds the pid (`mlkit-<purpose>-<pid>-...`), so a later run can
    tell a killed process's folder from a live one's.
    """
    import tempfile

    prefix = f"mlkit-{purpose}-"
    for old in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = old.name[len(prefix):].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as folder:
        yield folder


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def publish(finished, path):
    """Renames a finished file that was filled under another name (a resumable `.partial.h5`) over `path`.

    Readers see the old file or the new one, never half of one. Unlike
    `atomic_path`, nothing is removed on failure: the file under the other
    name is what a rerun resumes from.
    """
    os.replace(finished, path)


@contextlib.contextmanager
def atomic_path(path, need=None):
    """Yields a temporary path to write; renames it over `path` when the block succeeds.

    On any failure the temporary file is removed, and a full disk raises
    `DiskFullError` instead of the writer's own error.

    Args:
        path: the file to replace.
        need: bytes the file is expected to take, for the full-disk message. Defaults to None.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        close_hdf5(tmp)
        tmp.unlink(missing_ok=True)
        if isinstance(error, Exception) and disk_full_error(error, path) is not None:
            raise DiskFullError(path, need) from None  # the file the user knows, not its temporary name
        raise


@contextlib.contextmanager
def atomic_folder(path):
    """Yields a temporary folder to fill; it replaces the folder `path` when the block succeeds.

    The old folder is removed just before the rename, so a crash leaves either
    the old folder or the new one under `path` (and at worst a hidden
    temporary beside it, named as `temporary_path` names files).
    """
    path = Path(path)
    tmp = temporary_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, Exception) and disk_full_error(error, path) is not None:
            raise DiskFullError(path) from None
        raise


def write_bytes(path, data):
    """Writes bytes atomically, so a reader never sees half a file."""
    with atomic_path(path, need=len(data)) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def write_text(path, text):
    """Writes text atomically, so a reader never sees half a file."""
    write_bytes(path, text.encode())


def write_json(path, payload):
    """Writes JSON atomically, so a reader never sees half a file."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")


def save_weights_atomic(model, path):
    """`model.save_weights(path)`, written to a temporary file first and then renamed over `path`."""
    need = sum(int(getattr(weight, "nbytes", 0) or 0) for weight in model.get_weights()) + (64 << 10)
    with atomic_path(path, need) as tmp:
        model.save_weights(str(tmp))


def check_workdir(workdir):
    """The workspace folder as a Path; refuses one that is a file."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise MlkitError(f"--workdir {workdir} is a file, not a folder; give the workspace folder (it is created "
                         "when missing)")
    return workdir


def stage_folder(workdir, name):
    """`<workdir>/<name>`, created when missing; refuses a `workdir` that is a file."""
    folder = check_workdir(workdir) / name
    if folder.exists() and not folder.is_dir():
        raise MlkitError(f"{folder} is a file where mlkit keeps a folder; move it away or use another --workdir")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
