"""Feature files at scale and as files: millions of IDs, row blocks written as they come,
the old format, file modes under the umask."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from virnucpro.errors import VirnucproError
from virnucpro.features import FORMAT, FeatureWriter, read_features, read_metadata, write_features


def test_five_million_ids_round_trip(tmp_path):
    """Version 1 kept the IDs as a JSON list in the safetensors header, which refused to
    write past ~2.86 million IDs of 35 bytes ("header too large"), after the whole embedding."""
    started = time.perf_counter()
    n = 5_000_000
    ids = [f"c{i}_chunk_1F1" for i in range(n)]
    path = tmp_path / "big.esm2.safetensors"
    write_features(path, ids, torch.zeros(n, 1), {"info": "{}"}, "float16")
    back, features, meta = read_features(path)
    assert len(back) == n and back[0] == ids[0] and back[-1] == ids[-1]
    assert back == ids
    assert tuple(features.shape) == (n, 1)
    assert meta["rows"] == str(n) and meta["format"] == FORMAT
    assert time.perf_counter() - started < 20  # about 4 s on a laptop core


def test_ids_with_any_utf8_and_the_ids_tensor_is_plain_safetensors(tmp_path):
    ids = ["a", "é_chunk_1F1", "x|y", "中"]
    path = tmp_path / "x.safetensors"
    write_features(path, ids, torch.arange(8.0).reshape(4, 2), {"k": "v"}, "float32")
    assert read_features(path)[0] == ids
    with safe_open(str(path), "pt") as handle:  # readable by any safetensors reader
        assert handle.get_tensor("ids").numpy().tobytes().decode().split("\n") == ids
        assert handle.get_tensor("features")[3].tolist() == [6.0, 7.0]
        assert handle.metadata()["k"] == "v"


def test_an_id_with_a_newline_is_refused(tmp_path):
    with pytest.raises(ValueError, match="newline"):
        write_features(tmp_path / "x.safetensors", ["a\nb"], torch.zeros(1, 2), {})
    assert list(tmp_path.iterdir()) == []


def test_writer_appends_row_blocks_and_adds_metadata_at_the_end(tmp_path):
    path = tmp_path / "x.dnabert.safetensors"
    x = torch.randn(10, 3)
    with FeatureWriter(path, 3, "float32", {"model_kind": "dnabert"}) as writer:
        assert not path.exists()  # only the temporary file, until finish
        writer.append(["r0", "r1", "r2"], x[:3])
        writer.append([], x[:0])
        writer.append([f"r{i}" for i in range(3, 10)], x[3:])
        writer.finish({"info": json.dumps({"seconds": 1.5})})
    ids, y, meta = read_features(path)
    assert ids == [f"r{i}" for i in range(10)] and torch.equal(y, x)
    assert meta["model_kind"] == "dnabert" and json.loads(meta["info"]) == {"seconds": 1.5}
    assert read_metadata(path) == meta
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_writer_moves_the_rows_when_the_final_metadata_outgrows_the_room(tmp_path):
    path = tmp_path / "x.safetensors"
    x = torch.randn(5, 4)
    with FeatureWriter(path, 4, "float16") as writer:
        writer.append(list("abcde"), x)
        writer.finish({"info": "z" * 100_000})
    ids, y, meta = read_features(path)
    assert ids == list("abcde") and torch.equal(y, x.half().float())
    assert meta["info"] == "z" * 100_000


def test_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError), FeatureWriter(path, 2) as writer:
        writer.append(["a"], torch.zeros(1, 2))
        raise RuntimeError("the model failed")
    assert list(tmp_path.iterdir()) == []
    with FeatureWriter(path, 2) as writer:  # never finished: no file either
        writer.append(["a"], torch.zeros(1, 2))
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_a_directory_or_an_unwritable_place_at_once(tmp_path):
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(VirnucproError, match="x.safetensors: is a directory"):
        FeatureWriter(tmp_path / "x.safetensors", 2)
    with pytest.raises(VirnucproError, match="cannot write"):
        FeatureWriter(tmp_path / "no" / "such" / "dir" / "y.safetensors", 2)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_feature_files_honour_the_umask(tmp_path, umask, mode):
    """safetensors' save_file makes 0600 files whatever the umask; a feature file published
    for a group (--publish_features) must be as readable as the user's other files."""
    old = os.umask(umask)
    try:
        path = tmp_path / "x.safetensors"
        write_features(path, ["a"], torch.zeros(1, 2), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_version_1_files_are_still_read(tmp_path):
    """Files of virnucpro 0.1.0 (IDs as a JSON list in the metadata) read as before; they
    record no provenance, which classify then cannot check."""
    path = tmp_path / "old.esm2.safetensors"
    x = torch.randn(2, 3)
    save_file({"features": x}, str(path), {"ids": '["a","b"]', "rows": "2", "info": "{}"})
    ids, y, meta = read_features(path)
    assert ids == ["a", "b"] and torch.equal(y, x)
    assert "format" not in meta and "ids" not in meta


def corrupt_ids(tensor: torch.Tensor, rows: str):
    def make(path):
        save_file({"features": torch.zeros(2, 3), "ids": tensor}, str(path), {"rows": rows})

    return make


CORRUPT = {
    "ids-count": corrupt_ids(torch.tensor(list(b"a\nb\nc"), dtype=torch.uint8), "2"),
    "ids-not-utf8": corrupt_ids(torch.tensor([0xFF, 10, 0x41], dtype=torch.uint8), "2"),
    "ids-wrong-dtype": corrupt_ids(torch.zeros(3), "2"),
    "no-rows": corrupt_ids(torch.tensor(list(b"a\nb"), dtype=torch.uint8), ""),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_id_tensor_is_a_user_error(case, tmp_path):
    path = tmp_path / "shard_00001.dnabert.safetensors"
    CORRUPT[case](path)
    with pytest.raises(VirnucproError, match=str(path)):
        read_features(path)
