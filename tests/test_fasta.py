"""read_fasta: what it accepts and how it rejects bad input; atomic_writer."""

from __future__ import annotations

import gzip

import pytest

from virnucpro.errors import VirnucproError
from virnucpro.fasta import Record, read_fasta
from virnucpro.fileio import atomic_writer


def records(path, **kwargs):
    return list(read_fasta(path, **kwargs))


def write(tmp_path, text, name="in.fa"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# Accepted input
# --------------------------------------------------------------------------------------


def test_plain_records(tmp_path):
    path = write(tmp_path, ">a\nACGT\n>b\nGGCC\n")
    assert records(path) == [Record("a", "ACGT"), Record("b", "GGCC")]


def test_gzip_input(tmp_path):
    path = tmp_path / "in.fa.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(">a desc\nACGT\nAC\n>b\nGG\n")
    assert records(path) == [Record("a", "ACGTAC"), Record("b", "GG")]


def test_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "in.fa"
    path.write_bytes(gzip.compress(b">a\nACGT\n"))
    assert records(path) == [Record("a", "ACGT")]


def test_any_line_width_joined(tmp_path):
    path = write(tmp_path, ">a\nAC\nGTACG\nT\n>b\nACGTACGTACGTACGTACGTACGTACGTACGTACGT\n")
    assert records(path) == [
        Record("a", "ACGTACGT"),
        Record("b", "ACGTACGTACGTACGTACGTACGTACGTACGTACGT"),
    ]


def test_lowercase_kept_as_written(tmp_path):
    path = write(tmp_path, ">a\nacgtn\nACgt\n")
    assert records(path) == [Record("a", "acgtnACgt")]


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "in.fa"
    path.write_bytes(b">a first\r\nACGT\r\nGG\r\n>b\r\nTT\r\n")
    assert records(path) == [Record("a", "ACGTGG"), Record("b", "TT")]


def test_crlf_in_gzip(tmp_path):
    path = tmp_path / "in.fa.gz"
    path.write_bytes(gzip.compress(b">a\r\nAC\r\nGT\r\n"))
    assert records(path) == [Record("a", "ACGT")]


def test_no_final_newline(tmp_path):
    path = write(tmp_path, ">a\nACGT\n>b\nGG")
    assert records(path) == [Record("a", "ACGT"), Record("b", "GG")]


def test_blank_lines_ignored(tmp_path):
    path = write(tmp_path, "\n\n>a\nAC\n\nGT\n\n>b\nGG\n\n")
    assert records(path) == [Record("a", "ACGT"), Record("b", "GG")]


def test_iupac_codes_accepted(tmp_path):
    seq = "ACGTNRYSWKMBDHVUacgtnryswkmbdhvu-."
    path = write(tmp_path, f">a\n{seq}\n")
    assert records(path) == [Record("a", seq)]


@pytest.mark.parametrize(
    ("header", "record_id"),
    [
        ("seq1", "seq1"),
        ("seq1 Homo sapiens chromosome 1", "seq1"),
        ("seq1\tdescription", "seq1"),
        ("NC_045512.2 |virus| x=1", "NC_045512.2"),
        ("contig_1  two spaces", "contig_1"),
    ],
)
def test_id_is_first_word_of_header(tmp_path, header, record_id):
    path = write(tmp_path, f">{header}\nACGT\n")
    assert records(path) == [Record(record_id, "ACGT")]


def test_allow_empty_accepts_zero_byte_file(tmp_path):
    path = write(tmp_path, "")
    assert records(path, allow_empty=True) == []


def test_protein_accepted_when_not_nucleotide(tmp_path):
    path = write(tmp_path, ">p\nMKLVEEF\n")
    assert records(path, nucleotide=False) == [Record("p", "MKLVEEF")]


# --------------------------------------------------------------------------------------
# Rejected input: VirnucproError naming the file and the problem
# --------------------------------------------------------------------------------------


def assert_rejected(path, *fragments, **kwargs):
    with pytest.raises(VirnucproError) as info:
        records(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_file(tmp_path):
    assert_rejected(tmp_path / "nope.fa", "no such file")


def test_directory(tmp_path):
    directory = tmp_path / "dir.fa"
    directory.mkdir()
    assert_rejected(directory, "is a directory")


def test_empty_file(tmp_path):
    assert_rejected(write(tmp_path, ""), "empty file")


def test_whitespace_only_file(tmp_path):
    assert_rejected(write(tmp_path, "  \n\n\t\n"), "empty file")


def test_empty_gzip_file(tmp_path):
    path = tmp_path / "in.fa.gz"
    path.write_bytes(gzip.compress(b""))
    assert_rejected(path, "empty file")


@pytest.mark.parametrize(
    "text",
    [
        "sequence_id,length\nfoo,1\n",
        "@read1\nACGT\n+\nIIII\n",
        "ACGTACGT\n>a\nACGT\n",
    ],
)
def test_not_fasta(tmp_path, text):
    assert_rejected(write(tmp_path, text), "not FASTA", "line 1")


def test_not_fasta_reports_first_non_blank_line(tmp_path):
    assert_rejected(write(tmp_path, "\n\nhello\n>a\nACGT\n"), "not FASTA", "line 3")


def test_empty_record_between_records(tmp_path):
    assert_rejected(write(tmp_path, ">a\n>b\nACGT\n"), "'a'", "no sequence")


def test_empty_record_at_end(tmp_path):
    assert_rejected(write(tmp_path, ">a\nACGT\n>b\n"), "'b'", "no sequence")


def test_duplicate_ids(tmp_path):
    path = write(tmp_path, ">x first\nACGT\n>y\nGG\n>x second\nTT\n")
    message = assert_rejected(path, "duplicate", "'x'")
    assert "1" in message and "3" in message
    assert "records 1 and 3" in message


@pytest.mark.parametrize(
    ("seq", "letter"),
    [
        # M and K are IUPAC nucleotide codes; L is the first letter that is not
        ("MKLVEEF", "'L'"),
        ("ACGTEFGH", "'E'"),
        ("acgtqacgt", "'Q'"),
        ("ACGT*", "'*'"),
        ("ACGT1", "'1'"),
    ],
)
def test_protein_or_other_letters_rejected(tmp_path, seq, letter):
    path = write(tmp_path, f">p\n{seq}\n")
    assert_rejected(path, "'p'", letter, "not a nucleotide code")


@pytest.mark.parametrize("header", ["", " ", "\t"])
def test_empty_header(tmp_path, header):
    path = write(tmp_path, f">ok\nAC\n>{header}\nACGT\n")
    assert_rejected(path, "record 2", "empty header")


def test_allow_empty_still_rejects_other_problems(tmp_path):
    assert_rejected(write(tmp_path, "hello\n"), "not FASTA", allow_empty=True)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(b"".join(b">r%d\nACGTACGTAC\n" % i for i in range(5000)), mtime=0)
    path = tmp_path / "in.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    assert_rejected(path, "cannot read")


def test_corrupt_gzip(tmp_path):
    data = gzip.compress(b"".join(b">r%d\nACGTACGTAC\n" % i for i in range(5000)), mtime=0)
    # keep the 10-byte gzip header valid, garble 40 bytes of the deflate data
    corrupt = data[:20] + bytes(b ^ 0xFF for b in data[20:60]) + data[60:]
    path = tmp_path / "in.fa.gz"
    path.write_bytes(corrupt)
    assert_rejected(path, "cannot read")


# --------------------------------------------------------------------------------------
# atomic_writer
# --------------------------------------------------------------------------------------


def test_atomic_writer_success(tmp_path):
    path = tmp_path / "out.txt"
    with atomic_writer(path) as handle:
        handle.write("done\n")
        assert not path.exists()  # nothing under the final name until the block ends
    assert path.read_text() == "done\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_writer_leaves_no_file_when_block_raises(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_writer(path) as handle:
            handle.write("half a result")
            raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_atomic_writer_keeps_old_file_when_block_raises(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as handle:
            handle.write("new")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_writer_binary_mode(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_writer(path, "wb") as handle:
        handle.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_count_records_for_progress_totals(tmp_path):
    from virnucpro.fasta import count_records

    cases = {"three.fa": ">a\nAC\n>b\nGG\n\n>c\nT", "empty.fa": "", "header_only.fa": ">x\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert [count_records(tmp_path / name) for name in cases] == [3, 0, 1]
    # a record starting exactly at the 16 MiB read boundary is counted once
    body = b">r0\n" + b"A" * ((1 << 24) - 5) + b"\n"
    assert len(body) == 1 << 24
    (tmp_path / "boundary.fa").write_bytes(body + b">r1\nAC\n>r2\nA\n")
    assert count_records(tmp_path / "boundary.fa") == 3
    with gzip.open(tmp_path / "packed.fa.gz", "wt") as handle:
        handle.write(">a\nA\n")
    assert count_records(tmp_path / "packed.fa.gz") is None  # unknown: no total shown
