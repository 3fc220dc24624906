"""File-system safety shared by training and export: one writer per directory, OS errors in one line.

`DirectoryLock` is an advisory lock file that the kernel releases when its holder dies, used by
`keras_resnet_v2.training` (a run directory) and `keras_resnet_v2.export` (a serving base
directory, an ONNX file), which import nothing from each other. The lock is `fcntl.flock` on
`DIR/.lock`: held while the process lives, released on any exit, SIGKILL included, so a lock is
never stale and no process ID has to be trusted (in containers the writer is often PID 1 again,
so "is the recorded PID alive?" answers wrongly). The file records who holds it, for the message
a second writer gets.

Nothing here writes through a symbolic link that someone else placed: a lock file is opened with
`O_NOFOLLOW` and must be a regular file (`open_regular`), and `atomic_write` writes a fresh
`mkstemp` file (created with `O_EXCL`, under a random name) and renames it onto its target, which
replaces a link at the target instead of writing into the file it points to.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import tempfile
import time
import zipfile

LOCK_NAME = ".lock"


class DirectoryBusyError(RuntimeError):
    """Another process holds the directory's lock."""


class UnsafePathError(ValueError):
    """A file we would write is a symbolic link or not a regular file (someone else put it there)."""


def open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """`os.open(path, flags)` that never follows a symbolic link at `path` and opens only a regular file.

    Raises `UnsafePathError` (one line) for a link, a directory, a FIFO or a device at `path`.

    Example:
        >>> fd = open_regular("runs/r20/.lock", os.O_RDWR | os.O_CREAT)
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        fd = None
    if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    if fd is not None:
        os.close(fd)
    kind = "a symbolic link" if os.path.islink(path) else "not a regular file"
    raise UnsafePathError(f"{path} is {kind}; it is not written through. Remove it (nothing of ours is "
                          "ever a link there) and run again")


def atomic_write(path: str, write) -> None:
    """Calls `write(tmp_path)` on a new file beside `path`, syncs it and renames it onto `path`.

    A reader never sees a half-written `path`; a crash leaves at most a `.tmp-NAME-*` file. The
    temporary is `mkstemp`'s (O_EXCL, a random name), so a link planted at a guessable name is never
    written through, and the rename replaces a link at `path` itself rather than its target.

    Example:
        >>> atomic_write("runs/r20/curves.png", lambda tmp: figure.savefig(tmp, format="png"))  # doctest: +SKIP
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = "." + os.path.basename(path).split(".", 1)[-1] if "." in os.path.basename(path) else ""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix, dir=directory)
    os.close(fd)
    usual_modes(tmp)  # mkstemp makes 0600
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class DirectoryLock:
    """`with DirectoryLock(path, "a training run"):` holds `path/.lock`, or raises at once.

    Example:
        >>> with DirectoryLock("runs/r20", "a training run"):
        ...     pass  # the only writer of runs/r20 until here
    """

    def __init__(self, directory: str, purpose: str, lock_name: str = LOCK_NAME, target: str | None = None):
        """`lock_name`: a lock file per target instead of per directory (an ONNX file locks only
        itself: `.NAME.onnx.lock`); `target` is what the refusal names (default: the directory)."""
        self.directory, self.purpose = os.path.abspath(directory), purpose
        self.path = os.path.join(self.directory, lock_name)
        self.target = target or self.directory
        self._fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        os.makedirs(self.directory, exist_ok=True)
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DirectoryBusyError(f"{self.target} is in use by {holder}; wait for it to finish or "
                                     "write somewhere else") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"purpose": self.purpose, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"{holder['purpose']} (pid {holder['pid']} on {holder['host']}, since {holder['since']})")
    except (OSError, ValueError, KeyError):
        return "another process"


def usual_modes(path: str) -> None:
    """Gives `path` the modes a plain mkdir/open would (0755/0644 under umask 022): mkdtemp and
    mkstemp make 0700/0600, which another user (a TF Serving process, say) cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def check_writable_directory(path: str, what: str) -> None:
    """A one-line ValueError if `path` (or its nearest existing parent) is a file or not writable."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{what} must be a directory, but {probe} is a file. Received: {path!r}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} is not writable: no permission to write in {probe}. Received: {path!r}")


def describe_os_error(error: OSError) -> str:
    """One line for an OS error a user can act on: "no space left on device writing X", ..."""
    where = f" writing {error.filename}" if getattr(error, "filename", None) else ""
    if error.errno == errno.ENOSPC:
        return f"no space left on device{where}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}"
    return f"{error.strerror or error}{where}"


def atomic_write_text(path: str, text: str) -> None:
    """`atomic_write` of a text (a JSON report, a config, a table), the file closed before it is synced.

    Example:
        >>> atomic_write_text("runs/r20/config.json", "{}")
    """
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def read_json_object(path: str) -> dict:
    """The JSON object in `path` (a run's config.json, say); a one-line ValueError naming the file
    if it is truncated, not JSON or not an object. A missing file raises FileNotFoundError.

    Example:
        >>> config = read_json_object("runs/digits/config.json")  # doctest: +SKIP
    """
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is damaged (not valid JSON: {error}); repair it or move it aside") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is damaged: it must hold a JSON object. Received: {type(value).__name__}")
    return value


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, in hex (read 1 MiB at a time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file(path: str, what: str = "MODEL") -> str:
    """The `.keras` archive MODEL names (a file, or `model.keras` in a training run directory).

    A one-line ValueError naming the argument `what` otherwise; checked by the command lines before Keras is
    imported.
    """
    candidate = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not (os.path.isfile(candidate) and candidate.endswith(".keras")):
        raise ValueError(f"{what} must be a .keras file or a directory holding model.keras. Received: {path!r}")
    check_keras_archive(candidate, what)
    return candidate


def check_keras_archive(path: str, what: str) -> None:
    """A one-line ValueError naming the argument `what` unless the `.keras` file at `path` is a zip archive
    whose members inflate as a network's weights do: every place that opens a `.keras` file a user hands
    over (`weights=`, MODEL, `--init`) checks it so, before anything is inflated."""
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of an existing file
        raise ValueError(f"{what} {path!r} exists but is not a .keras archive (a .keras file is a zip "
                         "archive; this one is truncated, damaged or of another format)")
    _check_not_a_bomb(path, what)


# Weights are float arrays, which deflate compresses little (ResNet files: ratio about 1.1); a member
# that inflates far more is a decompression bomb, which Keras would expand into memory and onto disk.
MAX_INFLATION = 50
MAX_INFLATED_BYTES = 8 << 30  # a whole archive: well above any network of this package (ResNet-200: ~260 MB)


def _check_not_a_bomb(path: str, what: str) -> None:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    total = sum(member.file_size for member in members)
    for member in members:
        if member.file_size > (64 << 20) and member.file_size > MAX_INFLATION * max(member.compress_size, 1):
            raise ValueError(f"{what} {path!r}: member {member.filename!r} inflates {member.compress_size:,} bytes to "
                             f"{member.file_size:,} (ratio {member.file_size // max(member.compress_size, 1):,}; "
                             f"weights compress about 1.1x); not loaded, as a decompression bomb")
    if total > MAX_INFLATED_BYTES:
        raise ValueError(f"{what} {path!r} inflates to {total:,} bytes, more than the {MAX_INFLATED_BYTES:,} any "
                         "network of this package needs; not loaded")
