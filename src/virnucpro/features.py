"""Feature files: one safetensors file per shard and model, the frame IDs stored with rows.

safetensors holds only tensors and a str->str metadata map, so reading a file can never
run code. The IDs are a JSON list in the metadata, in row order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from virnucpro.errors import VirnucproError

FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def write_features(
    path: Path,
    ids: list[str],
    features: torch.Tensor,
    metadata: dict[str, str],
    dtype: str = "float16",
) -> None:
    """Write features (N, D) with their IDs; atomically, so a crash leaves no file."""
    if features.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} IDs for {features.shape[0]} feature rows")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    meta = dict(metadata, ids=json.dumps(ids), rows=str(len(ids)))
    tensor = features.to(FEATURE_DTYPES[dtype]).contiguous()
    try:
        save_file({"features": tensor}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_features(path: Path) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """IDs, float32 features (N, D) and the metadata of a feature file."""
    path = Path(path)
    if not path.is_file():
        raise VirnucproError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VirnucproError(f"{path}: not a virnucpro feature file ({e})") from None
    if "features" not in tensors or "ids" not in meta:
        raise VirnucproError(f"{path}: not a virnucpro feature file (no features or IDs)")
    try:
        ids = json.loads(meta.pop("ids"))
    except json.JSONDecodeError:
        raise VirnucproError(f"{path}: corrupt ID list") from None
    features = tensors["features"].float()
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise VirnucproError(
            f"{path}: {len(ids)} IDs but features of shape {tuple(features.shape)}"
        )
    return ids, features, meta
