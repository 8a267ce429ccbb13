"""virnucpro check-precision with the demo models on the CPU (fp8 through torch's CPU FP8
kernel): the table and its JSON, numbers that are computed (the reference against itself is
exact, fp8 is not), the sample, the fp8 bar, and bad input refused in one line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from virnucpro import check_precision as cp
from virnucpro.errors import VirnucproError
from virnucpro.models.files import resolve_models

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "example.fa"
VIRNUCPRO = Path(sys.executable).parent / "virnucpro"
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "200",
       "VIRNUCPRO_MODELS": "/nonexistent/virnucpro-models"}  # fmt: skip
FP8_BAR = "(min cosine >= 0.9995 and at most 0.1% of chunk calls changed)"


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's directory, to see that the work directory goes away."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def run(*args: object, cwd: Path, tmpdir: Path) -> SimpleNamespace:
    """``virnucpro check-precision ARGS`` as a user runs it."""
    proc = subprocess.run([str(VIRNUCPRO), "check-precision", *map(str, args)], cwd=cwd,
                          env={**ENV, "TMPDIR": str(tmpdir)}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    return SimpleNamespace(rc=proc.returncode, out=proc.stdout, err=proc.stderr)


def entries(directory: Path) -> list[str]:
    """What is in a directory but torch's compiler cache (torchinductor_USER, which torch makes
    in the temporary directory whatever runs: `models demo` too)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("torchinductor_"))


def one_line_error(result: SimpleNamespace, *fragments: str) -> None:
    assert result.rc == 2, result.err
    assert "Traceback" not in result.err and result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("virnucpro: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------------------
# End to end through the command line
# --------------------------------------------------------------------------------------


def test_default_run_prints_the_table_and_writes_only_the_json(demo, tmp_path):
    cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), tmpdir.mkdir()
    report_path = tmp_path / "report.json"
    result = run(EXAMPLE, "--models", demo, "--sample", 10, "--json", report_path, cwd=cwd,
                 tmpdir=tmpdir)  # fmt: skip
    assert result.rc == 0, result.err
    assert "Traceback" not in result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"check-precision: 10 of 16 sequences of {EXAMPLE} (seed 0), ")
    assert lines[1].startswith("device: cpu; ESM-2 eager; DNABERT-S at fp32")
    header = next(line for line in lines if line.startswith("precision "))
    for column in ("frames", "min cosine vs fp32", "mean cosine vs fp32",
                   "max |virus score diff|", "frame calls changed", "chunk calls changed",
                   "ESM-2 s"):  # fmt: skip
        assert column in header
    start = lines.index(header)
    rows = lines[start + 1 : lines.index("", start)]  # the table ends at an empty line
    assert [row.split("  ")[0].strip() for row in rows] == ["bf16", "fp8 (simulated)"]
    assert any(line.startswith("fp8 (simulated): run on the CPU through torch's FP8 kernel")
               for line in lines)  # fmt: skip
    # 24 chunks in this sample: too few to judge calls, so at best the cosine is judged
    assert lines[-1].startswith("fp8 (simulated) ")
    assert "does not meet" in lines[-1] or "chunk calls not judged: 24 chunks" in lines[-1]

    report = json.loads(report_path.read_text())
    assert report["sequences_in_input"] == 16 and report["sequences_sampled"] == 10
    assert report["device"] == "cpu" and report["reference"]["precision"] == "fp32"
    assert report["bar"] == {"precision": "fp8", "min_cosine": 0.9995,
                             "max_chunk_calls_changed_fraction": 0.001}  # fmt: skip
    assert [(r["precision"], r["simulated"]) for r in report["rows"]] == [
        ("bf16", False), ("fp8", True)
    ]  # fmt: skip
    for row in report["rows"]:
        assert row["frames"] == report["frames"] > 0
        assert row["chunks"] == report["chunks"] > 0
        assert 0.9 < row["min_cosine"] <= row["mean_cosine"] <= 1.0
        assert row["esm2_seconds"] > 0 and row["esm2_tokens"] > 0
        for key in ("max_virus_score_difference", "frame_calls_changed", "chunk_calls_changed",
                    "frame_calls_changed_percent", "chunk_calls_changed_percent"):  # fmt: skip
            assert row[key] >= 0
    # with 24 chunks no "yes": False if the cosine is under the bar, else not judged (None)
    fp8_close = report["rows"][1]["min_cosine"] >= 0.9995
    assert report["chunks"] == 24 and report["fp8_meets_bar"] is (None if fp8_close else False)
    assert report["verdict"] == lines[-1]
    # nothing written but the JSON: no file in the working directory, the work dir removed
    assert entries(cwd) == [] and entries(tmpdir) == []
    assert entries(tmp_path) == ["cwd", "report.json", "tmp"]


def test_bf16_alone_gives_one_row_and_no_fp8_verdict(demo, tmp_path):
    result = run(EXAMPLE, "--models", demo, "--sample", 4, "--seed", 3, "--precision", "bf16",
                 cwd=tmp_path, tmpdir=tmp_path)  # fmt: skip
    assert result.rc == 0, result.err
    lines = result.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("precision "))
    rows = lines[start + 1 : lines.index("", start)]
    assert len(rows) == 1 and rows[0].startswith("bf16 ")
    assert "simulated" not in result.out
    last = result.out.splitlines()[-1]
    assert last == f"fp8 not compared: no verdict on the project's bar {FP8_BAR}"
    assert entries(tmp_path) == []


# --------------------------------------------------------------------------------------
# The numbers are computed: the reference against itself is exact, fp8 is not
# --------------------------------------------------------------------------------------


def test_reference_against_itself_is_exact_and_fp8_moves_the_features(demo, private_tmp):
    models = resolve_models(demo)
    report = cp.check_precision(EXAMPLE, models, sample=16, precisions=["fp32", "fp8"],
                                device="cpu")  # fmt: skip
    same, fp8 = report["rows"]
    assert (same["precision"], same["simulated"]) == ("fp32", False)
    # its own pass, bit for bit (a vector's cosine with itself is 1 to the last float64 digit)
    assert same["min_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert same["mean_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert same["max_virus_score_difference"] == 0.0
    assert same["frame_calls_changed"] == same["chunk_calls_changed"] == 0
    assert (fp8["precision"], fp8["simulated"]) == ("fp8", True)
    assert fp8["min_cosine"] < fp8["mean_cosine"] < 1.0 - 1e-6
    assert fp8["max_virus_score_difference"] > 0.0
    assert report["frames"] == fp8["frames"] and report["sequences_sampled"] == 16
    text = cp.format_report(report)
    assert "\nfp32 " in text and "\nfp8 (simulated) " in text
    assert " 1.000000 " in text.split("\nfp32 ")[1].splitlines()[0]
    assert entries(private_tmp) == []


def test_changed_calls_are_counted_per_frame_and_per_chunk():
    """compare counts calls with classify's frame rule and summarize's chunk rule."""
    ids = ["a_chunk_1F1", "a_chunk_1R2", "a_chunk_2F1", "b_chunk_1F3"]
    rows = torch.eye(4, dtype=torch.float32)

    def scored(virus: list[float]) -> cp.Pass:
        scores = torch.tensor([[1 - v, v] for v in virus]).numpy()
        return cp.Pass("x", ids, rows, scores, {"seconds": 1.0})

    reference = scored([0.9, 0.2, 0.4, 0.5])
    other = scored([0.2, 0.4, 0.6, 0.5])
    row = cp.compare(reference, other)
    # frames: 0.9 -> 0.2 and 0.4 -> 0.6 change; 0.5 stays 'others' (a tie) on both sides
    assert (row["frame_calls_changed"], row["frame_calls_changed_percent"]) == (2, 50.0)
    # chunks (max score2 >= max score1): a_chunk_1 virus -> not, a_chunk_2 not -> virus,
    # b_chunk_1 virus (the tie) on both
    assert (row["chunks"], row["chunk_calls_changed"]) == (3, 2)
    assert row["max_virus_score_difference"] == pytest.approx(0.7)
    assert row["min_cosine"] == row["mean_cosine"] == 1.0


# --------------------------------------------------------------------------------------
# The bar, the sample, which precisions are compared
# --------------------------------------------------------------------------------------


def bar_row(min_cosine: float, changed: int, chunks: int = 2000) -> dict:
    return {"precision": "fp8", "simulated": False, "min_cosine": min_cosine,
            "chunk_calls_changed": changed, "chunks": chunks,
            "chunk_calls_changed_percent": 100 * changed / chunks}  # fmt: skip


def test_the_fp8_bar():
    assert (cp.FP8_BAR_MIN_COSINE, cp.FP8_BAR_MAX_CHUNK_CHANGES) == (0.9995, 0.001)
    assert cp.MIN_CHUNKS_TO_JUDGE == 1000
    assert cp.meets_bar(bar_row(0.9995, 2), "fp32")  # exactly at the bar: 0.1% of 2000 chunks
    assert cp.meets_bar(bar_row(0.9995, 3), "fp32") is False
    assert cp.meets_bar(bar_row(0.99949, 0), "fp32") is False
    assert cp.verdict([bar_row(0.9999, 1)], "fp32") == f"fp8 meets the project's bar {FP8_BAR}"
    assert cp.verdict([bar_row(0.998, 4)], "fp32") == (
        f"fp8 does not meet the project's bar {FP8_BAR}: min cosine 0.998000 < 0.9995; "
        "0.20% of chunk calls changed > 0.1%"
    )


def test_the_bar_is_not_judged_against_another_reference_or_on_too_few_chunks():
    # the bar is against fp32
    assert cp.meets_bar(bar_row(0.9999, 0), "bf16") is None
    assert cp.verdict([bar_row(0.9999, 0)], "bf16") == (
        f"fp8: no verdict on the project's bar {FP8_BAR}: it is against fp32, not bf16"
    )
    # 999 chunks: one changed call would be 0.1% already, so calls are not judged...
    assert cp.meets_bar(bar_row(0.9999, 1, chunks=999), "fp32") is None
    assert cp.verdict([bar_row(0.9999, 1, chunks=999)], "fp32") == (
        "fp8 meets the project's bar on cosine; chunk calls not judged: 999 chunks, fewer "
        "than the 1,000 that tell 0.1% (raise --sample)"
    )
    # ...but a cosine below the bar fails whatever the count
    assert cp.meets_bar(bar_row(0.999, 0, chunks=10), "fp32") is False
    assert cp.verdict([bar_row(0.999, 0, chunks=10)], "fp32").startswith(
        "fp8 does not meet the project's bar"
    )


def test_the_sample_is_seeded_spread_over_the_file_and_in_input_order(tmp_path):
    fasta = tmp_path / "many.fa"
    fasta.write_text("".join(f">s{i}\nACGTACGTAC\n" for i in range(1000)))
    records, total = cp.sample_records(fasta, 50, seed=7)
    indices = [int(r.id[1:]) for r in records]
    assert total == 1000 and len(records) == 50 == len(set(indices))
    assert indices == sorted(indices)
    assert min(indices) < 200 and max(indices) > 800  # not the first 50
    assert cp.sample_records(fasta, 50, seed=7)[0] == records
    assert cp.sample_records(fasta, 50, seed=8)[0] != records
    everything, total = cp.sample_records(fasta, 5000, seed=7)
    assert [r.id for r in everything] == [f"s{i}" for i in range(1000)] and total == 1000


def fake_gpu(monkeypatch, capability: tuple[int, int]) -> torch.device:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d=None: SimpleNamespace(name="NVIDIA RTX A6000"))  # fmt: skip
    return torch.device("cuda:0")


def test_default_precisions_leave_fp8_out_on_gpus_without_it(monkeypatch, caplog):
    gpu = fake_gpu(monkeypatch, (8, 6))
    with caplog.at_level(logging.WARNING, logger="virnucpro"):
        assert cp.compared_precisions(gpu, None) == ["bf16"]
    assert [r.getMessage() for r in caplog.records] == [
        "fp8 not compared: needs a GPU with FP8 tensor cores (compute capability 8.9 or "
        "newer); cuda:0 (NVIDIA RTX A6000, compute capability 8.6) has none"
    ]
    with pytest.raises(VirnucproError, match=r"^--precision fp8: needs a GPU .* 8\.6\) has none"):
        cp.compared_precisions(gpu, ["bf16", "fp8"])
    assert cp.compared_precisions(fake_gpu(monkeypatch, (9, 0)), None) == ["bf16", "fp8"]
    cpu = torch.device("cpu")
    assert cp.compared_precisions(cpu, None) == ["bf16", "fp8"]  # fp8 simulated
    assert cp.compared_precisions(cpu, ["fp8", "fp8", "fp32"]) == ["fp8", "fp32"]
    with pytest.raises(VirnucproError, match="--precision fp16: needs a CUDA GPU"):
        cp.compared_precisions(cpu, ["fp16"])
    with pytest.raises(VirnucproError, match="'auto' is not one of fp32, bf16, fp16, fp8"):
        cp.compared_precisions(cpu, ["auto"])


# --------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written, no model loaded
# --------------------------------------------------------------------------------------


def test_bad_input_is_one_line(demo, tmp_path):
    not_fasta = tmp_path / "notes.txt"
    not_fasta.write_text("just some text\n")
    stops = tmp_path / "stops.fa"
    stops.write_text(">stops\n" + "TTAG" * 300 + "\n")  # every frame meets a stop
    cases = [
        ([tmp_path / "missing.fa"], ["missing.fa: no such file"]),
        ([not_fasta], ["notes.txt: not FASTA"]),
        ([EXAMPLE, "--sample", 0], ["--sample", "greater than or equal to 1"]),
        ([EXAMPLE, "--precision", "int8"], ["--precision", "int8"]),
        ([EXAMPLE, "--precision", "auto"], ["--precision", "auto"]),
        ([EXAMPLE, "--reference", "fp8"], ["--reference", "fp8"]),
        ([EXAMPLE, "--precision", "fp16"], ["--precision fp16: needs a CUDA GPU"]),
        ([EXAMPLE, "--json", tmp_path / "no-dir" / "r.json"], ["--json", "no directory"]),
        ([stops], ["stops.fa: no frame of the 1 sampled sequence(s)", "nothing to compare"]),
    ]
    work = tmp_path / "work"
    work.mkdir()
    for args, fragments in cases:
        one_line_error(run(*args, "--models", demo, cwd=work, tmpdir=work), *fragments)
        assert entries(work) == [], args
    one_line_error(run(EXAMPLE, cwd=work, tmpdir=work), "/nonexistent/virnucpro-models")
