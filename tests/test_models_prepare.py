"""Checksums and ready-to-load copies: written once by `models prepare`, only read elsewhere;
with --outdir into a directory of links, the source left untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from virnucpro.errors import VirnucproError
from virnucpro.models import files, load
from virnucpro.models.demo import write_demo_models
from virnucpro.models.files import prepare_models, sha256, write_sha256_sidecar
from virnucpro.models.load import cache_path, load_esm2
from virnucpro.paths import checksum_sidecar as sidecar_path


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``directory`` (hidden ones included, links not followed)."""
    stats = {p: p.lstat() for p in [directory, *directory.rglob("*")]}
    return {
        p.relative_to(directory).as_posix(): (st.st_mode, st.st_size, st.st_mtime_ns)
        for p, st in stats.items()
    }


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """Demo models as written, nothing prepared."""
    directory = tmp_path_factory.mktemp("bare") / "models"
    write_demo_models(directory)
    assert not [p for p in directory.rglob(".*")]
    return directory


def no_hashing(monkeypatch) -> None:
    def refuse(path):
        raise AssertionError(f"{path}: hashed although its sidecar is fresh")

    monkeypatch.setattr(files, "file_sha256", refuse)


def no_checkpoint_reads(monkeypatch) -> None:
    def refuse(path):
        raise AssertionError(f"{path}: checkpoint read although a fresh copy is there")

    monkeypatch.setattr(load, "_read_checkpoint", refuse)


def test_sha256_writes_nothing(bare):
    before = snapshot(bare)
    esm = bare / "esm2.pt"
    assert sha256(esm) == hashlib.sha256(esm.read_bytes()).hexdigest()
    sha256(bare / "dnabert-s")
    assert snapshot(bare) == before


def test_sidecar_is_read_while_fresh_and_ignored_once_stale(tmp_path):
    model = tmp_path / "classifier_500.safetensors"
    model.write_bytes(b"weights")
    digest = write_sha256_sidecar(model)
    assert digest == hashlib.sha256(b"weights").hexdigest()
    stamp = sidecar_path(model).read_text().rpartition(" ")[0]
    sidecar_path(model).write_text(f"{stamp} {'0' * 64}\n")
    assert sha256(model) == "0" * 64  # read, not recomputed
    model.write_bytes(b"other!!")  # same size, new mtime/ctime
    assert sha256(model) == hashlib.sha256(b"other!!").hexdigest()


def test_directory_sidecar_covers_every_file_under_it(tmp_path, monkeypatch):
    directory = tmp_path / "dnabert-s"
    directory.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (directory / name).write_text(name)
    expected = sha256(directory)
    assert write_sha256_sidecar(directory) == expected
    assert sidecar_path(directory) == tmp_path / ".dnabert-s.sha256"
    with monkeypatch.context() as m:
        no_hashing(m)
        assert sha256(directory) == expected
    (directory / "config.json").write_text("changed")
    assert sha256(directory) != expected


def test_prepare_in_place_writes_once(bare, tmp_path, monkeypatch):
    directory = tmp_path / "models"
    directory.mkdir()
    for entry in bare.iterdir():
        (directory / entry.name).symlink_to(entry)  # cheap copy: prepare follows links
    assert prepare_models(directory) == directory
    hidden = sorted(p.name for p in directory.iterdir() if p.name.startswith("."))
    assert hidden == [
        ".classifier_300.safetensors.sha256",
        ".classifier_500.safetensors.sha256",
        ".dnabert-s.sha256",
        ".esm2.bfloat16.safetensors",
        ".esm2.pt.sha256",
    ]
    before = snapshot(directory)
    no_hashing(monkeypatch)
    no_checkpoint_reads(monkeypatch)
    prepare_models(directory)
    assert snapshot(directory) == before


def test_prepare_outdir_leaves_the_source_untouched_and_its_loads_use_the_caches(
    bare, tmp_path, monkeypatch
):
    before = snapshot(bare)
    out = tmp_path / "prepared"
    assert prepare_models(bare, out, "fp32") == out
    assert snapshot(bare) == before
    for entry in bare.iterdir():
        link = out / entry.name
        assert link.is_symlink() and Path(os.readlink(link)) == entry.resolve()
    paths = files.resolve_models(out)
    assert paths.esm2 == out / "esm2.pt"
    expected = {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (paths.esm2, paths.classifier)
    }
    no_hashing(monkeypatch)
    no_checkpoint_reads(monkeypatch)
    for path, digest in expected.items():
        assert sha256(path) == digest
    sha256(paths.dnabert)
    model = load_esm2(paths.esm2, dtype=torch.float32)
    assert cache_path(paths.esm2, torch.float32).is_file()
    assert next(model.parameters()).dtype == torch.float32
    assert snapshot(bare) == before


def test_prepare_outdir_again_relinks_and_keeps_fresh_caches(bare, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    prepare_models(bare, out)
    before = snapshot(out)
    no_hashing(monkeypatch)
    no_checkpoint_reads(monkeypatch)
    prepare_models(bare, out)
    assert snapshot(out) == before


def test_prepare_outdir_reuses_a_prepared_source_through_links(bare, tmp_path, monkeypatch):
    source = tmp_path / "store"
    source.mkdir()
    for entry in bare.iterdir():
        (source / entry.name).symlink_to(entry)
    prepare_models(source)  # as `models fetch` leaves a store
    before = snapshot(source)
    no_hashing(monkeypatch)
    no_checkpoint_reads(monkeypatch)
    out = prepare_models(source, tmp_path / "prepared")
    copy = cache_path(out / "esm2.pt", torch.bfloat16)
    assert copy.is_symlink() and copy.resolve() == (source / copy.name).resolve()
    assert snapshot(source) == before
    assert sha256(out / "esm2.pt") == hashlib.sha256((bare / "esm2.pt").read_bytes()).hexdigest()


def test_prepare_outdir_refuses_to_replace_a_real_file(bare, tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "esm2.pt").write_text("mine")
    with pytest.raises(VirnucproError, match="esm2.pt: exists and is not a link"):
        prepare_models(bare, out)
    assert (out / "esm2.pt").read_text() == "mine"


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_prepare_errors(tmp_path, make):
    directory = tmp_path / "models"
    if make == "empty":
        directory.mkdir()
    message = "models directory not found" if make == "missing" else "no model files"
    with pytest.raises(VirnucproError, match=message):
        prepare_models(directory)


def test_prepare_for_fp8_makes_the_bf16_copy_fp8_loads(bare, tmp_path, monkeypatch):
    """--precision fp8 loads ESM-2 in bf16 and quantizes it: its ready-to-load copy is the
    bf16 one, and an fp8 load reads that copy, not the checkpoint."""
    from virnucpro.embed import Esm2Embedder

    out = tmp_path / "prepared"
    prepare_models(bare, out, "fp8")
    assert cache_path(out / "esm2.pt", torch.bfloat16).is_file()
    assert not cache_path(out / "esm2.pt", torch.float32).exists()
    no_checkpoint_reads(monkeypatch)
    assert Esm2Embedder.load(out / "esm2.pt", torch.device("cpu"), "fp8").precision == "fp8"


def test_prepare_refuses_an_unknown_precision(bare, tmp_path):
    with pytest.raises(VirnucproError) as e:
        prepare_models(bare, tmp_path / "prepared", "int8")
    assert str(e.value) == "--precision: 'int8' is not one of fp32, bf16, fp16, fp8"
    assert not (tmp_path / "prepared").exists()
