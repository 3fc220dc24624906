"""How an export reaches the disk: written to a hidden temporary, verified, then renamed into place.

A reader (TF Serving, a runtime loading a file) sees either nothing or a verified export: a
failure, a kill or a full disk leaves at most a hidden temporary, removed by the next export of
the same target.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from keras_resnet_v2.plumbing.files import DirectoryLock, atomic_write_text, check_writable_directory, usual_modes


@dataclass
class Staged:
    """An export written to a hidden temporary `path`, invisible to servers until `publish()`.

    `companions` are further (temporary, final) files published with it, before it (OpenVINO's
    weights `.bin` beside its `.xml`): the file a runtime opens is renamed last, so a kill between
    the renames never leaves it beside weights of another export.
    """

    path: str
    final: str
    version_dir: bool = False  # a SavedModel version, which may replace an existing one
    companions: Sequence[tuple[str, str]] = field(default_factory=tuple)
    folder: Optional[str] = None  # a staging folder holding `path` and the companions, removed at the end
    # {path: text} written beside it once it is published, where absent (a user's edited copy is kept):
    # TF Serving's models.config and batching_parameters.txt beside the versions
    beside: dict = field(default_factory=dict)

    def publish(self) -> str:
        """Renames the export into place (atomically) with the usual modes; returns its path."""
        usual_modes(self.path)
        if self.version_dir and os.path.exists(self.final):  # overwrite: old version aside, new one in
            base, version = os.path.split(self.final)
            old = tempfile.mkdtemp(prefix=f".old-{version}-", dir=base)
            os.rename(self.final, os.path.join(old, "v"))
            os.rename(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
            return self._written_beside()
        if self.companions and os.path.lexists(self.final):
            os.remove(self.final)  # the old file never meets the new companions
        for tmp, final in self.companions:
            usual_modes(tmp)
            os.replace(tmp, final)
        os.replace(self.path, self.final)
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        return self._written_beside()

    def _written_beside(self) -> str:
        for path, text in self.beside.items():
            if not os.path.lexists(path):
                try:
                    atomic_write_text(path, text)
                except OSError as error:  # the export itself is published and verified: say so, go on
                    warnings.warn(f"{path} was not written ({error.strerror or error}); the export is published",
                                  UserWarning, stacklevel=3)
        return self.final

    def discard(self) -> None:
        for path in [self.path, *(tmp for tmp, _ in self.companions), *([self.folder] if self.folder else [])]:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)


def check_file_target(path: str, suffix: str, what: str) -> str:
    """The absolute path of a file export, or a one-line ValueError: it must end in `suffix`, not be a
    directory or a symbolic link (publishing would replace the link, not write where it points), and
    its folder must be writable."""
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(suffix):
        raise ValueError(f"The {what} file name must end in {suffix}. Received: path={path!r}")
    if os.path.isdir(path):
        raise ValueError(f"The {what} file path is a directory. Received: path={path!r}")
    if os.path.islink(path):
        raise ValueError(f"The {what} file path is a symbolic link; give the real path. Received: path={path!r}")
    check_writable_directory(os.path.dirname(path), f"The {what} file's folder")
    return path


def file_lock(path: str, what: str) -> DirectoryLock:
    """The lock of one exported file (`.NAME.lock` beside it): one writer per file."""
    folder, name = os.path.split(path)
    return DirectoryLock(folder, f"an {what} export" if what[0] in "AEIOU" else f"a {what} export",
                         lock_name=f".{name}.lock", target=path)


def _leftovers(path: str) -> re.Pattern:
    """`.tmp-NAME-...` (a file or folder being written, or left by a killed export of `path`)."""
    return re.compile(re.escape(f".tmp-{os.path.basename(path)}-") + ".+")


def stage_file(path: str, write: Callable[[str], None], suffix: str = "") -> Staged:
    """`write(tmp)` into a hidden temporary sibling of `path` (whose `file_lock` the caller holds), after
    removing what a killed export of `path` left; returns it staged. With `suffix` the temporary is a
    file ending in it, else a folder (for `write` to fill)."""
    folder = os.path.dirname(path)
    pattern = _leftovers(path)
    for name in os.listdir(folder):
        if pattern.fullmatch(name):
            leftover = os.path.join(folder, name)
            shutil.rmtree(leftover) if os.path.isdir(leftover) and not os.path.islink(leftover) else os.remove(leftover)
    prefix = f".tmp-{os.path.basename(path)}-"
    if suffix:
        handle, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(handle)
    else:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=folder)
    staged = Staged(tmp, path)
    try:
        write(tmp)
    except BaseException:
        staged.discard()
        raise
    return staged
