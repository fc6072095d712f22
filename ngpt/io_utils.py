"""Atomic file writes and file hashes.

Every write that must never be seen half-done goes through here: a temp file next to the target
(`.{name}.<random>.tmp`) or a temp folder (`.{name}.tmp-<pid>`), fsync, then one rename over the
target. A reader therefore sees either the old file or the whole new one, never half of one, even
when the writer is killed with `kill -9` mid-way; leftovers are garbage (`clean_stale`).

    atomic_write_text("runs/x/report.md", text)
    tmp = temp_dir_for(out); ...fill tmp...; replace_dir(tmp, out)
    file_sha256("model.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files 0600


def temp_file_for(path: Path) -> tuple[int, str]:
    """An open temp file next to `path` (same filesystem, so the final rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, FILE_MODE)
    return fd, tmp


def temp_dir_for(path: Path) -> Path:
    """A new empty folder `.{name}.tmp-<pid>` next to `path`, to build in before `replace_dir(tmp, path)`.

    The pid in the name lets `clean_stale` tell a dead builder's leftovers from a live build's.
    """
    path = Path(path)
    clean_stale(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def clean_stale(path: Path) -> None:
    """Remove the temp/old folders of `path` that builders which died left behind (their pid is gone)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for prefix in (f".{path.name}.tmp-", f".{path.name}.old-"):
        for p in path.parent.glob(prefix + "*"):
            pid = p.name[len(prefix) :]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temp path next to `path` for a writer that wants a file name (torch.save, savefig, os.link);
    on success it is fsynced and renamed over `path`, on any error removed.

        with atomic_output(ckpt) as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_for(path)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Move a fully built `tmp_dir` to `final_dir`, replacing an older one as late as possible."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_digest(path: str | Path, h) -> str:
    """Feed a file to hashlib object `h` in 1 MiB blocks; its hex digest."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, hashlib.sha256())


def read_json_file(path: str | Path, what: str, fix: str, error: type[Exception] = ValueError):
    """The parsed JSON of a file a person wrote; every failure is `error` naming the file and the fix.

    what: "Config file", "grid file", ...; fix: what to pass instead when the file is missing.
    Bad JSON names the line and column; bad UTF-8 the byte offset.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist. {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not valid UTF-8 (byte {e.start}); save it as UTF-8.") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
