"""Writing files so that a failure never leaves one that looks finished, and telling file
versions apart: the one atomic writer and the one stamp/sha256 helper of the package."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def temporary_path(path: Path) -> Path:
    """Where a file is written before it takes its place: beside it (the same file system, so
    the rename is atomic), hidden, with this process's id."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def put_in_place(tmp: Path, path: Path, mode: int | None = None) -> None:
    """Rename a finished temporary file to ``path``, with permissions ``mode`` (default: what
    the umask gives, 0644 under umask 022, as any file the user writes)."""
    os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; put in place (put_in_place) if the
    block succeeds, removed if it fails. Every file virnucpro writes goes through this or
    through the same two functions (features.FeatureWriter, which writes as rows arrive)."""
    tmp = temporary_path(path)
    try:
        yield tmp
        put_in_place(tmp, Path(path), mode)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO]:
    """``open(path, mode)`` through atomic_path: the file appears only when the block ends
    without an error, complete."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def save_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, atomically (save_file alone makes the file 0600)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, under
    the other threads writing files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022  # not Linux: the usual default


def _files_under(path: Path) -> list[Path]:
    """A directory's files, in name order, hidden files skipped."""
    return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))


def stamp(path: Path) -> str:
    """Identity of a file version without reading it: size, mtime, inode and ctime (which no
    copy tool keeps), through symlinks; of a directory, a digest of its files' names and
    stamps. A cache or checksum recorded with a stamp is valid while the stamp matches."""
    path = Path(path)
    if not path.is_dir():
        s = path.stat()
        return f"{s.st_size} {s.st_mtime_ns} {s.st_ino} {s.st_ctime_ns}"
    listing = "".join(f"{f.relative_to(path).as_posix()}\0{stamp(f)}\n" for f in _files_under(path))
    return hashlib.sha256(listing.encode()).hexdigest()


def sha256(path: Path) -> str:
    """sha256 of a file's bytes; of a directory, of its files' names and sha256s (hidden
    files skipped)."""
    path = Path(path)
    if path.is_dir():
        listing = "".join(f"{f.relative_to(path).as_posix()}\0{sha256(f)}\n"
                          for f in _files_under(path))  # fmt: skip
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
