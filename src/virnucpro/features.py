"""Feature files: one safetensors file per shard and model, the frame IDs stored with rows.

safetensors holds only tensors and a str->str metadata map, so reading a file can never
run code. Two tensors: ``features`` (N, D), float16 or float32, rows in prepared order, and
``ids``, uint8: the frame IDs in row order, UTF-8, joined by newlines (any count fits; in the
JSON header, where version 1 kept them, about 2.8 million did not). The metadata records
what made the file (FORMAT, rows, model kind and checksum, precision, chunk size, ``info``).

FeatureWriter writes a file as its rows arrive, so that a whole shard's features never
need to be in memory: the header is written with room to spare, the rows follow it as they
come, the IDs go after the last row, and the header is rewritten with the final counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from virnucpro.errors import VirnucproError
from virnucpro.fileio import put_in_place, temporary_path

FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
FORMAT = "virnucpro-features/2"
# Provenance keys of the metadata (classify compares them)
KIND, MODEL_SHA256, PRECISION, FEATURE_DTYPE, CHUNK_SIZE = (
    "model_kind", "model_sha256", "precision", "feature_dtype", "chunk_size",
)  # fmt: skip
UNKNOWN = "unknown"

_SAFETENSORS_DTYPE = {"float16": "F16", "float32": "F32"}
_ITEMSIZE = {"float16": 2, "float32": 4}
# Room left in the header for what is known only at the end (counts, timings)
HEADER_SLACK = 4096
# Rows converted to the file's dtype at a time by write_features
WRITE_ROWS = 65536


def _header(meta: dict[str, str], rows: int, dim: int, dtype: str, id_bytes: int) -> bytes:
    size = rows * dim * _ITEMSIZE[dtype]
    header = {
        "__metadata__": meta,
        "features": {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": [rows, dim],
                     "data_offsets": [0, size]},
        "ids": {"dtype": "U8", "shape": [id_bytes], "data_offsets": [size, size + id_bytes]},
    }  # fmt: skip
    return json.dumps(header, separators=(",", ":")).encode()


class FeatureWriter:
    """Writes one feature file row block by row block; atomically: the file appears only
    when finish() returns, complete (a temporary name beside it until then). Created with
    mode 0666 minus the umask, as any file a user's program writes.

    Creating the writer creates the temporary file, so a directory that cannot be written
    fails here, before any work goes into the rows."""

    def __init__(
        self, path: Path, dim: int, dtype: str = "float16", metadata: dict[str, str] | None = None
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature dtype {dtype!r}: one of {', '.join(FEATURE_DTYPES)}")
        self.path, self.dim, self.dtype = Path(path), dim, dtype
        self.metadata = dict(metadata or {})
        self.rows = 0
        self.ids = bytearray()
        self.tmp = temporary_path(self.path)
        if self.path.is_dir():
            raise VirnucproError(f"{self.path}: is a directory")
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            self.fd: int | None = os.open(self.tmp, flags, 0o666)
        except OSError as e:
            raise VirnucproError(f"{self.path}: cannot write ({e.strerror})") from None
        # Room for the final header: the same metadata plus counts and what finish() adds.
        # The data start stays a multiple of 8 (safetensors' alignment).
        first = _header(self._meta(self.metadata), 10**15, dim, dtype, 10**15)
        self.header_size = -(-(len(first) + HEADER_SLACK) // 8) * 8
        try:
            self._pwrite(b" " * (8 + self.header_size), 0)
        except VirnucproError:
            self.discard()
            raise

    def _meta(self, extra: dict[str, str]) -> dict[str, str]:
        return {**self.metadata, **extra, "format": FORMAT, "rows": str(self.rows)}

    def _pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as e:
            raise VirnucproError(f"{self.path}: cannot write ({e.strerror})") from None

    def append(self, ids: Sequence[str], features: torch.Tensor) -> None:
        """The next rows of the file and their IDs (no newline in an ID)."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features of shape {tuple(features.shape)}, expected (N, {self.dim})")
        if features.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} IDs for {features.shape[0]} feature rows")
        if not ids:
            return
        joined = "\n".join(ids)
        if joined.count("\n") != len(ids) - 1:
            raise ValueError("a frame ID holds a newline")
        rows = features.to(FEATURE_DTYPES[self.dtype]).contiguous().cpu().numpy()
        row_bytes = self.dim * _ITEMSIZE[self.dtype]
        self._pwrite(rows, 8 + self.header_size + self.rows * row_bytes)
        if self.ids:
            self.ids += b"\n"
        self.ids += joined.encode()
        self.rows += len(ids)

    def finish(self, metadata: dict[str, str] | None = None) -> Path:
        """Write the IDs and the final header, then rename into place; returns the path.
        ``metadata``: added to (or replacing entries of) the writer's."""
        end = 8 + self.header_size + self.rows * self.dim * _ITEMSIZE[self.dtype]
        self._pwrite(self.ids, end)
        end += len(self.ids)
        header = _header(self._meta(metadata or {}), self.rows, self.dim, self.dtype,
                         len(self.ids))  # fmt: skip
        if len(header) > self.header_size:  # more metadata than foreseen: move the data
            end = self._move_data(-(-len(header) // 8) * 8, end)
        padded = header + b" " * (self.header_size - len(header))
        self._pwrite(len(padded).to_bytes(8, "little") + padded, 0)
        try:
            os.ftruncate(self.fd, end)
            os.close(self.fd)
            self.fd = None
            put_in_place(self.tmp, self.path)
        except OSError as e:
            self.discard()
            raise VirnucproError(f"{self.path}: cannot write ({e.strerror})") from None
        return self.path

    def _move_data(self, header_size: int, end: int) -> int:
        """Shift the data (up to ``end``) to make room for a header of header_size bytes,
        last block first; returns the new end."""
        shift, start, position = header_size - self.header_size, 8 + self.header_size, end
        while position > start:
            low = max(start, position - (1 << 24))
            self._pwrite(os.pread(self.fd, position - low, low), low + shift)
            position = low
        self.header_size = header_size
        return end + shift

    def discard(self) -> None:
        """Remove the temporary file (after a failure)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None or self.fd is not None:  # failed, or never finished
            self.discard()


def write_features(
    path: Path,
    ids: list[str],
    features: torch.Tensor,
    metadata: dict[str, str],
    dtype: str = "float16",
) -> None:
    """Write features (N, D) with their IDs; atomically, so a crash leaves no file."""
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} IDs for feature rows of shape {tuple(features.shape)}")
    with FeatureWriter(path, features.shape[1], dtype, metadata) as writer:
        for start in range(0, len(ids), WRITE_ROWS):
            writer.append(ids[start : start + WRITE_ROWS], features[start : start + WRITE_ROWS])
        writer.finish()


def _open(path: Path):
    path = Path(path)
    if not path.is_file():
        raise VirnucproError(f"{path}: no such file")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise VirnucproError(f"{path}: not a virnucpro feature file ({e})") from None


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a feature file, without reading its rows."""
    with _open(path) as handle:
        return dict(handle.metadata() or {})


def read_features(path: Path) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """IDs, float32 features (N, D) and the metadata of a feature file (the IDs not in it).

    Files of format 1 (virnucpro 0.1.0: the IDs a JSON list in the metadata) are read too."""
    path = Path(path)
    try:
        with _open(path) as handle:
            meta = dict(handle.metadata() or {})
            names = set(handle.keys())
            features = handle.get_tensor("features") if "features" in names else None
            id_bytes = handle.get_tensor("ids") if "ids" in names else None
    except (SafetensorError, OSError, ValueError) as e:
        raise VirnucproError(f"{path}: not a virnucpro feature file ({e})") from None
    if features is None or (id_bytes is None and "ids" not in meta):
        raise VirnucproError(f"{path}: not a virnucpro feature file (no features or IDs)")
    if id_bytes is not None:  # format 2
        rows = meta.get("rows", "")
        if id_bytes.dtype != torch.uint8 or id_bytes.ndim != 1 or not rows.isdigit():
            raise VirnucproError(f"{path}: corrupt ID list")
        try:
            text = id_bytes.numpy().tobytes().decode()
        except UnicodeDecodeError:
            raise VirnucproError(f"{path}: corrupt ID list (not UTF-8)") from None
        ids = text.split("\n") if int(rows) else []
    else:  # format 1
        try:
            ids = json.loads(meta.pop("ids"))
        except json.JSONDecodeError:
            raise VirnucproError(f"{path}: corrupt ID list") from None
    features = features.float()
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise VirnucproError(
            f"{path}: {len(ids)} IDs but features of shape {tuple(features.shape)}"
        )
    return ids, features, meta
