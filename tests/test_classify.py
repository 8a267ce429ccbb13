"""classify checks that its two feature files belong together, from what each records of the
model, precision and chunk size that made it: swapped files, files of different runs and a
chunk size other than the classifier's are refused with a one-line error."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from virnucpro.classify import classify
from virnucpro.errors import VirnucproError
from virnucpro.features import read_metadata, write_features
from virnucpro.models.classifier import MLPClassifier, write_classifier

IDS = ["s_chunk_1F1", "s_chunk_1F2", "s_chunk_1R3"]
DNA_DIM, ESM_DIM = 48, 64  # what the demo models give


def provenance(kind: str, precision: str = "fp32", chunk_size: str = "500") -> dict[str, str]:
    return {"model_kind": kind, "model_sha256": f"{kind}-sha", "precision": precision,
            "feature_dtype": "float32", "chunk_size": chunk_size, "info": "{}"}  # fmt: skip


def feature_pair(directory: Path, dna_meta: dict | None, esm_meta: dict | None) -> tuple:
    """A DNABERT-S and an ESM-2 feature file, recording what is given (None: nothing)."""
    directory.mkdir(parents=True, exist_ok=True)
    dna, esm = directory / "x.dnabert.safetensors", directory / "x.esm2.safetensors"
    gen = torch.Generator().manual_seed(0)
    write_features(dna, IDS, torch.randn(3, DNA_DIM, generator=gen), dna_meta or {}, "float32")
    write_features(esm, IDS, torch.randn(3, ESM_DIM, generator=gen), esm_meta or {}, "float32")
    return dna, esm


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[MLPClassifier, Path]:
    path = tmp_path_factory.mktemp("classifier") / "classifier_500.safetensors"
    torch.manual_seed(0)
    model = MLPClassifier(DNA_DIM + ESM_DIM).eval()
    write_classifier(model, path)
    return model, path


def run(dna: Path, esm: Path, classifier, out: Path, chunk_size: int = 500):
    model, path = classifier
    return classify(dna, esm, model, path, chunk_size, out)


def test_matching_files_are_classified(tmp_path, classifier):
    dna, esm = feature_pair(tmp_path, provenance("dnabert"), provenance("esm2"))
    tsv, _ = run(dna, esm, classifier, tmp_path / "out")
    assert len(tsv.read_text().splitlines()) == 1 + len(IDS)


def test_swapped_files_are_refused(tmp_path, classifier):
    """The widths add up either way (768 + 2560 = 2560 + 768): swapped, the files used to be
    scored, with other scores and flipped labels, and exit status 0."""
    dna, esm = feature_pair(tmp_path, provenance("dnabert"), provenance("esm2"))
    out = tmp_path / "out"
    with pytest.raises(VirnucproError, match="swapped") as error:
        run(esm, dna, classifier, out)
    message = str(error.value)
    assert str(esm) in message and str(dna) in message and "\n" not in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("dna_kind", "esm_kind", "wrong", "fragment"),
    [
        ("esm2", "esm2", "dna", "ESM-2 features"),
        ("dnabert", "dnabert", "esm", "DNABERT-S features"),
    ],
)
def test_a_file_of_the_wrong_model_is_refused(tmp_path, classifier, dna_kind, esm_kind, wrong,
                                              fragment):  # fmt: skip
    dna, esm = feature_pair(tmp_path, provenance(dna_kind), provenance(esm_kind))
    with pytest.raises(VirnucproError, match=fragment) as error:
        run(dna, esm, classifier, tmp_path / "out")
    assert str(error.value).startswith(str(dna if wrong == "dna" else esm))


def test_different_precisions_are_refused(tmp_path, classifier):
    dna, esm = feature_pair(tmp_path, provenance("dnabert", "fp32"), provenance("esm2", "bf16"))
    with pytest.raises(VirnucproError) as error:
        run(dna, esm, classifier, tmp_path / "out")
    assert str(error.value) == f"{esm}: made at precision bf16, {dna} at fp32"


@pytest.mark.parametrize(("dna_precision", "esm_precision"),
                         [("bf16", "fp32"), ("fp16", "bf16"), ("fp32", "fp8"), ("fp16", "fp8"),
                          ("fp8", "bf16")])  # fmt: skip
def test_every_other_precision_mismatch_is_still_refused(tmp_path, classifier, dna_precision,
                                                         esm_precision):  # fmt: skip
    """Only the pair --precision fp8 makes is taken."""
    dna, esm = feature_pair(tmp_path, provenance("dnabert", dna_precision),
                            provenance("esm2", esm_precision))  # fmt: skip
    with pytest.raises(VirnucproError) as error:
        run(dna, esm, classifier, tmp_path / "out")
    assert str(error.value) == f"{esm}: made at precision {esm_precision}, {dna} at {dna_precision}"


def test_fp8_protein_features_go_with_bf16_dna_features(tmp_path, classifier):
    """What --precision fp8 makes: ESM-2 at fp8, DNABERT-S at bf16."""
    dna, esm = feature_pair(tmp_path, provenance("dnabert", "bf16"), provenance("esm2", "fp8"))
    tsv, _ = run(dna, esm, classifier, tmp_path / "out")
    assert len(tsv.read_text().splitlines()) == 1 + len(IDS)


def test_different_chunk_sizes_are_refused(tmp_path, classifier):
    dna, esm = feature_pair(tmp_path, provenance("dnabert", chunk_size="500"),
                            provenance("esm2", chunk_size="300"))  # fmt: skip
    with pytest.raises(VirnucproError) as error:
        run(dna, esm, classifier, tmp_path / "out")
    assert str(error.value) == f"{esm}: made at chunk size 300, {dna} at 500"


def test_a_chunk_size_other_than_the_classifiers_is_refused(tmp_path, classifier):
    dna, esm = feature_pair(tmp_path, provenance("dnabert", chunk_size="300"),
                            provenance("esm2", chunk_size="300"))  # fmt: skip
    with pytest.raises(VirnucproError) as error:
        run(dna, esm, classifier, tmp_path / "out", chunk_size=500)
    message = str(error.value)
    assert message.startswith(f"{dna}: made at chunk size 300, ")
    assert "--chunk-size 500" in message and "classifier_500.safetensors" in message


def test_files_that_record_no_provenance_are_classified_with_a_warning(tmp_path, classifier,
                                                                       caplog):  # fmt: skip
    """Files written by virnucpro 0.1.0 (or by hand) say nothing of their models."""
    dna, esm = feature_pair(tmp_path, None, None)
    with caplog.at_level(logging.WARNING, logger="virnucpro"):
        tsv, _ = run(dna, esm, classifier, tmp_path / "out")
    assert len(tsv.read_text().splitlines()) == 1 + len(IDS)
    assert any("not checked" in r.getMessage() for r in caplog.records)


def test_unknown_chunk_size_is_not_held_against_the_files(tmp_path, classifier, caplog):
    """A prepared file written without prepare's header note gives features of unknown chunk
    size: classified, with a warning."""
    dna, esm = feature_pair(tmp_path, provenance("dnabert", chunk_size="unknown"),
                            provenance("esm2", chunk_size="unknown"))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="virnucpro"):
        run(dna, esm, classifier, tmp_path / "out")
    assert any("chunk size" in r.getMessage() for r in caplog.records)


def test_files_without_rows_need_no_provenance(tmp_path, classifier, caplog):
    """An empty shard's prepared files have no header to say the chunk size."""
    dna, esm = tmp_path / "e.dnabert.safetensors", tmp_path / "e.esm2.safetensors"
    write_features(dna, [], torch.zeros(0, DNA_DIM), provenance("dnabert", chunk_size="unknown"))
    write_features(esm, [], torch.zeros(0, ESM_DIM), provenance("esm2", chunk_size="unknown"))
    with caplog.at_level(logging.WARNING, logger="virnucpro"):
        tsv, _ = run(dna, esm, classifier, tmp_path / "out")
    assert len(tsv.read_text().splitlines()) == 1
    assert not caplog.records


# --------------------------------------------------------------------------------------
# Through the stages, with the demo models: prepare records the chunk size, the embed stages
# record it and their model, classify checks
# --------------------------------------------------------------------------------------


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """``virnucpro ARGS`` in this process: exit status and stderr."""
    from virnucpro import cli as cli_module

    monkeypatch.setattr(sys, "argv", ["virnucpro", "-q", *map(str, args)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as done:
            cli_module.main()
    finally:
        logging.getLogger().handlers.clear()  # they write to capsys's stream
    return done.value.code, capsys.readouterr().err


def test_stages_record_provenance_and_classify_checks_it(demo, tmp_path, monkeypatch, capsys):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\n" + "ATGGCCAAAGGGCTGCTG" * 40 + "\n>b\n" + "GCC" * 150 + "\n")
    out = tmp_path / "out"
    assert cli(monkeypatch, capsys, "prepare", fasta, "--chunk-size", 300, "--prefix", "P",
               "--outdir", out) == (0, "")  # fmt: skip
    assert (out / "P.protein.faa").read_text().startswith(">a_chunk_1F1 chunk_size=300\n")
    for stage, suffix in (("embed-dna", "nucleotide.fa"), ("embed-protein", "protein.faa")):
        rc, err = cli(monkeypatch, capsys, stage, out / f"P.{suffix}", "--models", demo,
                      "--outdir", out, "--device", "cpu", "--precision", "fp32")  # fmt: skip
        assert rc == 0, err
    dna, esm = out / "P.dnabert.safetensors", out / "P.esm2.safetensors"
    for path, kind in ((dna, "dnabert"), (esm, "esm2")):
        meta = read_metadata(path)
        assert (meta["model_kind"], meta["precision"], meta["chunk_size"]) == (kind, "fp32", "300")
        assert meta["feature_dtype"] == "float16" and len(meta["model_sha256"]) == 64
        assert json.loads(meta["info"])["model_sha256"] == meta["model_sha256"]

    rc, err = cli(monkeypatch, capsys, "classify", dna, esm, "--models", demo, "--outdir", out)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"virnucpro: error: {dna}: made at chunk size 300, ")
    assert not (out / "P.scores.tsv").exists()

    rc, err = cli(monkeypatch, capsys, "classify", esm, dna, "--models", demo, "--outdir", out,
                  "--chunk-size", 300)  # fmt: skip
    assert rc == 2 and err.count("\n") == 1 and "swapped" in err
    assert not (out / "P.scores.tsv").exists()

    rc, err = cli(monkeypatch, capsys, "classify", dna, esm, "--models", demo, "--outdir", out,
                  "--chunk-size", 300)  # fmt: skip
    assert (rc, err) == (0, "")
    assert (out / "P.scores.tsv").is_file()
