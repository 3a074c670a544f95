"""Workdir paths on a local disk or an object store (``gs://``, ``s3://``) through ``etils.epath``.

Every workdir read and write goes through :func:`as_path` and the writers here, so a workdir may
be a local directory or a bucket URL such as ``gs://bucket/run``.

What is atomic:

* Local files: :func:`write_text_atomic` / :func:`write_bytes_atomic` write a temporary file in
  the destination folder, fsync it and move it into place with ``os.replace``; a reader sees the
  old or the new file, never a part, and no temporary file is left behind.
* Object stores: one object is written by one upload that becomes visible only when complete, so
  the writers upload the object directly (no temporary object; object stores have no atomic
  rename).
* Directories: locally a directory copied or built under a temporary name is renamed into place
  (atomic). On an object store a "directory" is a set of objects and cannot be renamed atomically:
  :func:`copy_tree` uploads file by file, with the files named in ``last`` (a completion marker)
  after all others, so a copy without its marker is unfinished.
* Growing files (``metrics.jsonl``, TensorBoard event files): object stores cannot append, so
  :class:`LocalMirror` grows them in a local folder and uploads each changed file whole on
  :meth:`LocalMirror.sync`; every upload replaces the object with a complete, newer version.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Sequence

from etils import epath

PathLike = str | os.PathLike

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def as_path(path: PathLike) -> epath.Path:
    """``path`` (a local path or a URL such as ``gs://bucket/run``) as an ``epath.Path``."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"a path must be a str or os.PathLike, got {type(path).__name__}: {path!r}")
    if not os.fspath(path):
        raise ValueError("a path must not be empty")
    return epath.Path(path)


def is_local(path: PathLike) -> bool:
    """Whether ``path`` names the local file system (no ``scheme://`` prefix)."""
    return _URL.match(os.fspath(path)) is None


def write_bytes_atomic(path: PathLike, data: bytes) -> epath.Path:
    """Write ``data`` to ``path`` so a reader never sees a part of it (see the module doc);
    creates the parent folders."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        path.write_bytes(data)  # One object upload: visible only once complete.
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: PathLike, text: str) -> epath.Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode())


def size(path: PathLike) -> int:
    """The size of the file ``path`` in bytes."""
    path = as_path(path)
    return os.path.getsize(path) if is_local(path) else path.stat().length


def remove(path: PathLike) -> None:
    """Remove the file, link or directory tree at ``path`` (a link is removed, not followed);
    nothing there is not an error."""
    path = as_path(path)
    if is_local(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    elif path.is_dir():
        path.rmtree(missing_ok=True)
    elif path.exists():
        path.unlink(missing_ok=True)


def files_under(root: PathLike) -> list[epath.Path]:
    """Every file below the directory ``root`` (recursively), sorted."""
    root = as_path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    found: list[epath.Path] = []
    for child in root.iterdir():
        found.extend(files_under(child) if child.is_dir() else [child])
    return sorted(found, key=os.fspath)


def copy_tree(source: PathLike, destination: PathLike, *, last: Sequence[str] = ()) -> epath.Path:
    """Copy the directory ``source`` to ``destination``, which must not exist (either may be local
    or remote). Local to local is ``shutil.copytree``; otherwise file by file, the files whose
    name is in ``last`` after all others (a completion marker lands only after what it marks)."""
    source, destination = as_path(source), as_path(destination)
    if destination.exists():
        raise FileExistsError(f"cannot copy {source} to {destination}: the destination exists")
    if is_local(source) and is_local(destination):
        shutil.copytree(source, destination)
        return destination
    files = sorted(files_under(source), key=lambda file: file.name in last)
    destination.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = destination / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.read_bytes())
    return destination


class LocalMirror:
    """A local folder, :attr:`local`, whose files are copied to ``destination`` on :meth:`sync`.

    For a local ``destination`` the folder is ``destination`` itself and :meth:`sync` does
    nothing. For an object store it is a temporary local folder: :meth:`sync` uploads every file
    whose size or modification time changed since the last sync, each as one whole object (a
    reader sees an older or a newer complete file, never a part), and :meth:`close` syncs and
    deletes the local copy. The files named in ``download`` (paths relative to ``destination``)
    are fetched first when they exist there, so appending to them continues the earlier run's.
    """

    def __init__(self, destination: PathLike, *, download: Sequence[str] = ()):
        self.destination = as_path(destination)
        self._remote = not is_local(self.destination)
        self._synced: dict[str, tuple[int, int]] = {}
        self.destination.mkdir(parents=True, exist_ok=True)
        if not self._remote:
            self.local = pathlib.Path(self.destination)
            return
        self.local = pathlib.Path(tempfile.mkdtemp(prefix="xaijax-mirror-"))
        for name in download:
            source = self.destination / name
            if source.is_file():
                target = self.local / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())
                self._synced[name] = _signature(target)

    def sync(self) -> list[epath.Path]:
        """Upload the files changed since the last sync; returns where they went."""
        if not self._remote:
            return []
        uploaded = []
        for file in sorted(p for p in self.local.rglob("*") if p.is_file()):
            name = file.relative_to(self.local).as_posix()
            signature = _signature(file)
            if self._synced.get(name) != signature:
                uploaded.append(write_bytes_atomic(self.destination / name, file.read_bytes()))
                self._synced[name] = signature
        return uploaded

    def close(self) -> None:
        """Sync, then delete the local copy of a remote destination."""
        if self._remote and self.local.exists():
            try:
                self.sync()
            finally:
                shutil.rmtree(self.local, ignore_errors=True)


def _signature(file: pathlib.Path) -> tuple[int, int]:
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns
