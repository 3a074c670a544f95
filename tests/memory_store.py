"""An in-memory object store served as epath's ``gs`` backend, for the workdir tests
(``tests/test_paths.py``, ``tests/test_workdirs.py``)."""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import os

from etils.epath import backend as epath_backend
from etils.epath import gpath, stat_utils


class _Upload(io.BytesIO):
    """A write stream that becomes the object only when closed (one upload)."""

    def __init__(self, store: MemoryStore, key: str):
        super().__init__()
        self._store, self._key = store, key

    def close(self) -> None:
        if not self.closed:
            self._store.objects[self._key] = self.getvalue()
            self._store.uploads.append(self._key)
        super().close()


@dataclasses.dataclass(eq=False)
class MemoryStore(epath_backend.Backend):
    """An object store in memory: objects under keys, directories only implied by key prefixes,
    no append and no rename (the code under test must not need them)."""

    objects: dict[str, bytes] = dataclasses.field(default_factory=dict)
    uploads: list[str] = dataclasses.field(default_factory=list)

    @staticmethod
    def _key(path) -> str:
        return os.fspath(path).rstrip("/")

    def _children(self, path) -> set[str]:
        prefix = self._key(path) + "/"
        return {k[len(prefix) :].split("/")[0] for k in self.objects if k.startswith(prefix)}

    def open(self, path, mode):
        key = self._key(path)
        if mode in ("w", "wb"):
            stream = _Upload(self, key)
            return stream if mode == "wb" else io.TextIOWrapper(stream, encoding="utf-8")
        if mode in ("r", "rb"):
            if key not in self.objects:
                raise FileNotFoundError(key)
            data = self.objects[key]
            return io.BytesIO(data) if mode == "rb" else io.StringIO(data.decode())
        raise NotImplementedError(f"object stores cannot open with mode {mode!r}")

    def exists(self, path) -> bool:
        return self._key(path) in self.objects or self.isdir(path)

    def isdir(self, path) -> bool:
        return bool(self._children(path))

    def listdir(self, path) -> list[str]:
        if not self.isdir(path):
            raise FileNotFoundError(self._key(path))
        return sorted(self._children(path))

    def glob(self, path) -> list[str]:
        pattern = self._key(path)
        parent, _ = pattern.rsplit("/", 1)
        names = [f"{parent}/{c}" for c in self._children(parent)]
        return sorted(n for n in names if fnmatch.fnmatch(n, pattern))

    def walk(self, top, *, top_down=True, on_error=None):
        raise NotImplementedError("walk is not needed")

    def makedirs(self, path, *, exist_ok=False, mode=None) -> None:
        pass  # No directories in an object store.

    def mkdir(self, path, *, exist_ok=False, mode=None) -> None:
        pass

    def rmtree(self, path) -> None:
        prefix = self._key(path) + "/"
        for key in [k for k in self.objects if k.startswith(prefix)]:
            del self.objects[key]

    def remove(self, path) -> None:
        if self._key(path) not in self.objects:
            raise FileNotFoundError(self._key(path))
        del self.objects[self._key(path)]

    def rename(self, path, dst) -> None:
        raise AssertionError(f"rename({path}, {dst}) on an object store")

    def replace(self, path, dst) -> None:
        raise AssertionError(f"replace({path}, {dst}) on an object store")

    def copy(self, path, dst, *, overwrite) -> None:
        self.objects[self._key(dst)] = self.objects[self._key(path)]
        self.uploads.append(self._key(dst))

    def stat(self, path) -> stat_utils.StatResult:
        key = self._key(path)
        size = len(self.objects[key]) if key in self.objects else 0
        return stat_utils.StatResult(is_directory=self.isdir(path), length=size, mtime=0)


def serve_gs(monkeypatch) -> MemoryStore:
    """A fresh in-memory store serving every ``gs://`` path until the test ends."""
    memory = MemoryStore()
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", memory)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # Else tf's gfile is used.
    return memory
