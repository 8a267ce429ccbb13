"""Stage prepare, checked against values worked out by hand from DESIGN.md's method rules.

Every expected value below was derived on paper from the rules in DESIGN.md ("The method,
exactly"); the arithmetic is in the comments. None was copied from the code's output.
"""

from __future__ import annotations

import gzip
import re

import pytest

from virnucpro.fasta import Record
from virnucpro.paths import fasta_stem
from virnucpro.prepare import (
    Frame,
    chunk_bounds,
    kept_frames,
    prepare,
    prepare_record,
    reverse_complement,
    translate,
)

# --------------------------------------------------------------------------------------
# Chunking: n = ceil(L/C); R = n*C - L; lo = floor(R/n); need = R - lo*(n-1);
# gaps = [lo+1]*need + [lo]*max(0, n-1-need) + [0];
# start_k = k*C - sum(gaps[:k]); end_k = min(start_k + C, L).
# --------------------------------------------------------------------------------------

CHUNK_CASES = [
    # C=500, L=499: n=1, R=1, lo=1, need=1, gaps=[2, 0]; one chunk 0..min(500, 499).
    (499, 500, [(0, 499)]),
    # C=500, L=500: n=1, R=0, lo=0, need=0, gaps=[0]; one chunk 0..500.
    (500, 500, [(0, 500)]),
    # C=500, L=501: n=2, R=499, lo=249, need=499-249*1=250,
    # gaps=[250]*250+[0] (need > n-1: only gaps[0] is used);
    # start1 = 500-250 = 250, end1 = min(750, 501) = 501.
    (501, 500, [(0, 500), (250, 501)]),
    # C=500, L=1001 (2C+1): n=3, R=1500-1001=499, lo=166, need=499-166*2=167,
    # gaps=[167]*167+[0]; start1 = 500-167 = 333, end1 = 833;
    # start2 = 1000-(167+167) = 666, end2 = min(1166, 1001) = 1001.
    (1001, 500, [(0, 500), (333, 833), (666, 1001)]),
    # C=500, L=1200 (DESIGN.md's example): n=3, R=300, lo=100, need=300-200=100,
    # gaps=[101]*100+[0]; start1 = 500-101 = 399, end1 = 899;
    # start2 = 1000-202 = 798, end2 = min(1298, 1200) = 1200.
    (1200, 500, [(0, 500), (399, 899), (798, 1200)]),
    # C=500, L=2600: n=ceil(5.2)=6, R=3000-2600=400, lo=floor(400/6)=66,
    # need=400-66*5=70, gaps=[67]*70+[0];
    # starts: 500-67=433, 1000-134=866, 1500-201=1299, 2000-268=1732, 2500-335=2165;
    # ends: 933, 1366, 1799, 2232, min(2665, 2600)=2600.
    (
        2600,
        500,
        [(0, 500), (433, 933), (866, 1366), (1299, 1799), (1732, 2232), (2165, 2600)],
    ),
    # C=500, L=2996: n=6, R=4, lo=floor(4/6)=0, need=4-0=4,
    # gaps=[1]*4 + [0]*max(0, 5-4) + [0] = [1, 1, 1, 1, 0, 0] (here the lo gaps appear);
    # starts: 0, 500-1=499, 1000-2=998, 1500-3=1497, 2000-4=1996, 2500-(4+0)=2496;
    # ends: 500, 999, 1498, 1997, 2496, min(2996, 2996)=2996.
    (
        2996,
        500,
        [(0, 500), (499, 999), (998, 1498), (1497, 1997), (1996, 2496), (2496, 2996)],
    ),
    # C=300, L=299: n=1, R=1, lo=1, need=1, gaps=[2, 0]; one chunk 0..299.
    (299, 300, [(0, 299)]),
    # C=300, L=300: one chunk 0..300.
    (300, 300, [(0, 300)]),
    # C=300, L=301: n=2, R=299, lo=149, need=299-149=150, gaps=[150]*150+[0];
    # start1 = 300-150 = 150, end1 = min(450, 301) = 301.
    (301, 300, [(0, 300), (150, 301)]),
    # C=300, L=601 (2C+1): n=3, R=900-601=299, lo=99, need=299-99*2=101,
    # gaps=[100]*101+[0]; start1 = 300-100 = 200, end1 = 500;
    # start2 = 600-200 = 400, end2 = min(700, 601) = 601.
    (601, 300, [(0, 300), (200, 500), (400, 601)]),
    # C=300, L=1000: n=ceil(3.33)=4, R=1200-1000=200, lo=50, need=200-50*3=50,
    # gaps=[51]*50+[0]; starts: 300-51=249, 600-102=498, 900-153=747;
    # ends: 549, 798, min(1047, 1000)=1000.
    (1000, 300, [(0, 300), (249, 549), (498, 798), (747, 1000)]),
    # Tiny sequences are one chunk of their own length.
    (1, 500, [(0, 1)]),
    (1, 300, [(0, 1)]),
]


@pytest.mark.parametrize(("length", "chunk_size", "expected"), CHUNK_CASES)
def test_chunk_bounds(length, chunk_size, expected):
    assert chunk_bounds(length, chunk_size) == expected


def test_last_chunk_can_be_shorter_than_chunk_size():
    # L=1200, C=500: last chunk 798..1200 is 402 long, not 500 (the divide-by-n quirk).
    bounds = chunk_bounds(1200, 500)
    assert [end - start for start, end in bounds] == [500, 500, 402]


# --------------------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------------------

# The standard genetic code, written out by amino acid (64 codons).
STANDARD_CODE = {
    "F": "TTT TTC",
    "L": "TTA TTG CTT CTC CTA CTG",
    "I": "ATT ATC ATA",
    "M": "ATG",
    "V": "GTT GTC GTA GTG",
    "S": "TCT TCC TCA TCG AGT AGC",
    "P": "CCT CCC CCA CCG",
    "T": "ACT ACC ACA ACG",
    "A": "GCT GCC GCA GCG",
    "Y": "TAT TAC",
    "*": "TAA TAG TGA",
    "H": "CAT CAC",
    "Q": "CAA CAG",
    "N": "AAT AAC",
    "K": "AAA AAG",
    "D": "GAT GAC",
    "E": "GAA GAG",
    "C": "TGT TGC",
    "W": "TGG",
    "R": "CGT CGC CGA CGG AGA AGG",
    "G": "GGT GGC GGA GGG",
}
CODON_CASES = [(codon, aa) for aa, codons in STANDARD_CODE.items() for codon in codons.split()]


def test_standard_code_written_out_has_64_codons():
    assert len({codon for codon, _ in CODON_CASES}) == 64


@pytest.mark.parametrize(("codon", "aa"), CODON_CASES)
def test_translate_single_codon(codon, aa):
    assert translate(codon, 0) == aa


@pytest.mark.parametrize(
    ("seq", "frame", "protein"),
    [
        # ATG GCC AAA GGG -> M A K G
        ("ATGGCCAAAGGG", 0, "MAKG"),
        # (A) TGG CCA AAG (GG) -> W P K; the trailing "GG" is a partial codon, ignored
        ("ATGGCCAAAGGG", 1, "WPK"),
        # (AT) GGC CAA AGG (G) -> G Q R
        ("ATGGCCAAAGGG", 2, "GQR"),
        # stops are kept as '*'
        ("TAATAGTGA", 0, "***"),
        ("ATGTAAGGG", 0, "M*G"),
        # ATG AA: the partial "AA" is ignored
        ("ATGAA", 0, "M"),
        # (A) TGA -> *: i=1 <= len-3=2
        ("ATGAA", 1, "*"),
        # (AT) GAA -> E: i=2 <= 2, the last possible codon
        ("ATGAA", 2, "E"),
        # too short for any codon
        ("AT", 0, ""),
        ("ATG", 1, ""),
        ("", 0, ""),
    ],
)
def test_translate_frames(seq, frame, protein):
    assert translate(seq, frame) == protein


@pytest.mark.parametrize(
    ("seq", "protein"),
    [
        # ATG NNN AAA -> M (dropped) K
        ("ATGNNNAAA", "MK"),
        # RCC has an IUPAC letter: dropped, although every reading would be Ala/Thr
        ("ATGRCCAAA", "MK"),
        # GCN would be Ala whatever N is, but only A/C/G/T codons translate: dropped
        ("ATGGCNAAA", "MK"),
        # Y, S, W, K, M, B, D, H, V each kill their codon
        ("YTTSTTWTTKTTMTTBTTDTTHTTVTT", ""),
        # gaps are "other letters" too
        ("ATG-GCAAA", "MK"),
        # RNA: U is not one of A/C/G/T, so AUG is dropped
        ("AUGAAA", "K"),
        # only ambiguous codons: empty protein
        ("NNNNNN", ""),
    ],
)
def test_translate_drops_ambiguous_codons(seq, protein):
    assert translate(seq, 0) == protein


# --------------------------------------------------------------------------------------
# Reverse complement
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        # complement TACG, reversed GCAT
        ("ATGC", "GCAT"),
        # complement TTGCAN, reversed NACGTT
        ("AACGTN", "NACGTT"),
        # complement T R Y N - (only A is complemented), reversed
        ("ARYN-", "-NYRT"),
        # IUPAC codes are not complemented (R stays R, not Y)
        ("RYSWKMBDHV", "VHDBMKWSYR"),
        # lower case is "other letters": only the upper-case T becomes A; then reversed
        ("acgT", "Agca"),
        ("", ""),
    ],
)
def test_reverse_complement(seq, expected):
    assert reverse_complement(seq) == expected


# --------------------------------------------------------------------------------------
# Kept frames
# --------------------------------------------------------------------------------------


def test_kept_frames_all_six_in_order_with_plus_one_slice():
    # chunk = ATGGCCAAAGGG (12 bp), revcomp: complement TACCGGTTTCCC -> CCCTTTGGCCAT.
    # F1 ATG GCC AAA GGG = MAKG;   slice [0 : 1+12] clipped = whole 12
    # F2 TGG CCA AAG     = WPK;    slice [1 : 2+9]  = [1:11] = TGGCCAAAGG
    # F3 GGC CAA AGG     = GQR;    slice [2 : 3+9]  = [2:12] = GGCCAAAGGG
    # R1 CCC TTT GGC CAT = PFGH;   slice [0:13] clipped = CCCTTTGGCCAT
    # R2 CCT TTG GCC     = PLA;    slice [1:11] = CCTTTGGCCA
    # R3 CTT TGG CCA     = LWP;    slice [2:12] = CTTTGGCCAT
    assert kept_frames("s_chunk_1", "ATGGCCAAAGGG") == [
        Frame("s_chunk_1F1", "ATGGCCAAAGGG", "MAKG"),
        Frame("s_chunk_1F2", "TGGCCAAAGG", "WPK"),
        Frame("s_chunk_1F3", "GGCCAAAGGG", "GQR"),
        Frame("s_chunk_1R1", "CCCTTTGGCCAT", "PFGH"),
        Frame("s_chunk_1R2", "CCTTTGGCCA", "PLA"),
        Frame("s_chunk_1R3", "CTTTGGCCAT", "LWP"),
    ]


def test_kept_frames_plus_one_base_on_f1_when_not_clipped():
    # chunk = ATGGCCAAAGGGT (13 bp); revcomp: complement TACCGGTTTCCCA -> ACCCTTTGGCCAT.
    # F1 ATG GCC AAA GGG    = MAKG (4 codons, 12 bases); slice [0:13] = all 13, so the
    #    extra base T after the last codon is included
    # F2 TGG CCA AAG GGT    = WPKG; slice [1 : 2+12=14] clipped = [1:13]
    # F3 GGC CAA AGG        = GQR;  slice [2 : 3+9=12]
    # R1 ACC CTT TGG CCA    = TLWP; slice [0:13] = all 13
    # R2 CCC TTT GGC CAT    = PFGH; slice [1:14] clipped = [1:13] = CCCTTTGGCCAT
    # R3 CCT TTG GCC        = PLA;  slice [2:12] = CCTTTGGCCA
    assert kept_frames("x", "ATGGCCAAAGGGT") == [
        Frame("xF1", "ATGGCCAAAGGGT", "MAKG"),
        Frame("xF2", "TGGCCAAAGGGT", "WPKG"),
        Frame("xF3", "GGCCAAAGGG", "GQR"),
        Frame("xR1", "ACCCTTTGGCCAT", "TLWP"),
        Frame("xR2", "CCCTTTGGCCAT", "PFGH"),
        Frame("xR3", "CCTTTGGCCA", "PLA"),
    ]


def test_kept_frames_only_reverse_frame_survives():
    # chunk = ATAATTAGCTAA, designed so every frame but R1 has a stop:
    # F1 ATA ATT AGC TAA = IIS*   (stop)
    # F2 TAA TTA GCT     = *LA    (stop)
    # F3 AAT TAG CTA     = N*L    (stop)
    # revcomp: complement TATTAATCGATT, reversed TTAGCTAATTAT
    # R1 TTA GCT AAT TAT = LANY   kept; slice [0 : 1+12] clipped = whole 12
    # R2 TAG ...         = *...   (stop)
    # R3 AGC TAA ...     = S*...  (stop)
    assert kept_frames("r_chunk_1", "ATAATTAGCTAA") == [
        Frame("r_chunk_1R1", "TTAGCTAATTAT", "LANY")
    ]


def test_kept_frames_slice_length_follows_protein_not_codons():
    # chunk = ATGNNNAAAGGG; ambiguous codons are dropped, so the slice (f-1 : f+3*len(p))
    # covers fewer bases than the codons read.
    # F1 ATG NNN AAA GGG -> MKG (3 aa); slice [0:10] = ATGNNNAAAG
    # F2 TGN NNA AAG     -> K;          slice [1:5]  = TGNN
    # F3 GNN NAA AGG     -> R;          slice [2:6]  = GNNN
    # revcomp: complement TACNNNTTTCCC, reversed CCCTTTNNNCAT
    # R1 CCC TTT NNN CAT -> PFH;        slice [0:10] = CCCTTTNNNC
    # R2 CCT TTN NNC     -> P;          slice [1:5]  = CCTT
    # R3 CTT TNN NCA     -> L;          slice [2:6]  = CTTT
    assert kept_frames("n", "ATGNNNAAAGGG") == [
        Frame("nF1", "ATGNNNAAAG", "MKG"),
        Frame("nF2", "TGNN", "K"),
        Frame("nF3", "GNNN", "R"),
        Frame("nR1", "CCCTTTNNNC", "PFH"),
        Frame("nR2", "CCTT", "P"),
        Frame("nR3", "CTTT", "L"),
    ]


@pytest.mark.parametrize(
    "chunk",
    [
        # CTAG repeats are their own reverse complement and hold TAG in every frame:
        # F1 CTA GCT AGC TAG, F2 TAG ..., F3 AGC TAG ...; R1..R3 are the same.
        "CTAGCTAGCTAG",
        # no complete codon in any frame: every protein is empty, so nothing is kept
        "AC",
        # only ambiguous codons: empty proteins
        "NNNNNNNNN",
    ],
)
def test_kept_frames_none(chunk):
    assert kept_frames("z", chunk) == []


# --------------------------------------------------------------------------------------
# prepare_record
# --------------------------------------------------------------------------------------


def test_prepare_record_upper_cases_before_translation():
    # lower-case input is translated as ATGGCCAAAGGG (see the six-frame test above);
    # the nucleotide slices come out upper case too.
    prepared = prepare_record(Record("lc", "atggccaaaggg"), 500)
    assert prepared.id == "lc"
    assert prepared.length == 12
    assert prepared.chunks == 1
    assert prepared.chunks_with_frames == 1
    assert prepared.frames == [
        Frame("lc_chunk_1F1", "ATGGCCAAAGGG", "MAKG"),
        Frame("lc_chunk_1F2", "TGGCCAAAGG", "WPK"),
        Frame("lc_chunk_1F3", "GGCCAAAGGG", "GQR"),
        Frame("lc_chunk_1R1", "CCCTTTGGCCAT", "PFGH"),
        Frame("lc_chunk_1R2", "CCTTTGGCCA", "PLA"),
        Frame("lc_chunk_1R3", "CTTTGGCCAT", "LWP"),
    ]


def test_prepare_record_mixed_case_same_as_upper():
    mixed = prepare_record(Record("m", "AtGgCcAaAgGg"), 300)
    upper = prepare_record(Record("m", "ATGGCCAAAGGG"), 300)
    assert mixed == upper
    assert len(mixed.frames) == 6


@pytest.mark.parametrize("chunk_size", [300, 500])
def test_prepare_record_shorter_than_chunk_is_one_chunk(chunk_size):
    # 13 bp < C: one chunk, the whole sequence, ID {record}_chunk_1
    prepared = prepare_record(Record("short", "ATGGCCAAAGGGT"), chunk_size)
    assert prepared.chunks == 1
    assert prepared.chunks_with_frames == 1
    assert [f.id for f in prepared.frames] == [
        "short_chunk_1F1",
        "short_chunk_1F2",
        "short_chunk_1F3",
        "short_chunk_1R1",
        "short_chunk_1R2",
        "short_chunk_1R3",
    ]
    assert prepared.frames[0].nucleotide == "ATGGCCAAAGGGT"


def test_prepare_record_chunk_without_frames_counted_but_produces_nothing():
    # seq = CTAG*50 (0..200) + GCC*100 (200..500) + G (500): L=501, C=500.
    # Bounds (see test_chunk_bounds): chunk_1 = 0..500, chunk_2 = 250..501.
    # chunk_1 holds 200 bp of CTAG repeat on both strands: a stop in every frame -> none.
    # chunk_2 = seq[250:501]: 250 is 50 bases into the GCC repeat, 50 % 3 = 2 -> starts
    #   at the last C of a GCC; so chunk_2 = "C" + "GCC"*83 + "G" (1 + 249 + 1 = 251 bp).
    #   F1 codons CGC x83 (i=0..246)          -> R*83; slice [0:250]  = "C"+"GCC"*83
    #   F2 codons GCC x83 (i=1..247)          -> A*83; slice [1:251]  = "GCC"*83+"G"
    #   F3 codons CCG x83 (i=2..248, last CCG)-> P*83; slice [2:252] clipped = chunk[2:]
    #   revcomp = "C" + "GGC"*83 + "G"
    #   R1 CGG x83 -> R*83; slice rc[0:250]; R2 GGC x83 -> G*83; slice rc[1:251];
    #   R3 GCG x83 (last G,C + final G)       -> A*83; slice rc[2:] (clipped)
    seq = "CTAG" * 50 + "GCC" * 100 + "G"
    chunk2 = "C" + "GCC" * 83 + "G"
    rc2 = "C" + "GGC" * 83 + "G"
    assert seq[250:] == chunk2  # the hand-derived chunk really is that slice
    prepared = prepare_record(Record("mix", seq), 500)
    assert prepared.length == 501
    assert prepared.chunks == 2
    assert prepared.chunks_with_frames == 1
    assert prepared.frames == [
        Frame("mix_chunk_2F1", "C" + "GCC" * 83, "R" * 83),
        Frame("mix_chunk_2F2", "GCC" * 83 + "G", "A" * 83),
        Frame("mix_chunk_2F3", "CC" + "GCC" * 82 + "G", "P" * 83),
        Frame("mix_chunk_2R1", "C" + "GGC" * 83, "R" * 83),
        Frame("mix_chunk_2R2", "GGC" * 83 + "G", "G" * 83),
        Frame("mix_chunk_2R3", "GC" + "GGC" * 82 + "G", "A" * 83),
    ]
    assert prepared.frames[2].nucleotide == chunk2[2:]
    assert prepared.frames[5].nucleotide == rc2[2:]


def test_prepare_record_no_frames_at_all():
    # CTAG repeat, 1001 bp (L = 2C+1 with C=500): 3 chunks, all with stops everywhere.
    seq = ("CTAG" * 251)[:1001]
    prepared = prepare_record(Record("stops", seq), 500)
    assert (prepared.length, prepared.chunks, prepared.chunks_with_frames) == (1001, 3, 0)
    assert prepared.frames == []


# --------------------------------------------------------------------------------------
# prepare(): end to end through the files
# --------------------------------------------------------------------------------------

INPUT_FASTA = """\
>orf1 a 12-bp ORF, written in lower case
atggccaaaggg
>stops CTAG repeat: a stop in every frame of both strands
CTAG
CTAGCTAG
>onlyR

ATAATTAGCTAA
"""

EXPECTED_NUCLEOTIDE = """\
>orf1_chunk_1F1
ATGGCCAAAGGG
>orf1_chunk_1F2
TGGCCAAAGG
>orf1_chunk_1F3
GGCCAAAGGG
>orf1_chunk_1R1
CCCTTTGGCCAT
>orf1_chunk_1R2
CCTTTGGCCA
>orf1_chunk_1R3
CTTTGGCCAT
>onlyR_chunk_1R1
TTAGCTAATTAT
"""

EXPECTED_PROTEIN = """\
>orf1_chunk_1F1
MAKG
>orf1_chunk_1F2
WPK
>orf1_chunk_1F3
GQR
>orf1_chunk_1R1
PFGH
>orf1_chunk_1R2
PLA
>orf1_chunk_1R3
LWP
>onlyR_chunk_1R1
LANY
"""

EXPECTED_TABLE = (
    "sequence_id\tlength\tchunks\tchunks_with_frames\tframes_kept\n"
    "orf1\t12\t1\t1\t6\n"
    "stops\t12\t1\t0\t0\n"
    "onlyR\t12\t1\t1\t1\n"
)


@pytest.mark.parametrize("chunk_size", [300, 500])
def test_prepare_end_to_end(tmp_path, chunk_size):
    fasta = tmp_path / "sample.fasta"
    fasta.write_text(INPUT_FASTA)
    outdir = tmp_path / "out"
    counts = prepare(fasta, chunk_size, outdir, "P")
    assert (counts.sequences, counts.chunks, counts.frames_kept) == (3, 3, 7)
    # each header notes the chunk size after the ID (recorded by the embed stages)
    noted = {text: re.sub(r"^(>\S+)$", rf"\1 chunk_size={chunk_size}", text, flags=re.M)
             for text in (EXPECTED_NUCLEOTIDE, EXPECTED_PROTEIN)}  # fmt: skip
    assert (outdir / "P.nucleotide.fa").read_text() == noted[EXPECTED_NUCLEOTIDE]
    assert (outdir / "P.protein.faa").read_text() == noted[EXPECTED_PROTEIN]
    assert (outdir / "P.sequences.tsv").read_text() == EXPECTED_TABLE
    assert sorted(p.name for p in outdir.iterdir()) == [
        "P.nucleotide.fa",
        "P.protein.faa",
        "P.sequences.tsv",
    ]


def test_prepare_end_to_end_multi_chunk(tmp_path):
    # Same 501-bp design as test_prepare_record_chunk_without_frames_counted_...:
    # chunk_1 has no frame, chunk_2 has six.
    seq = "CTAG" * 50 + "GCC" * 100 + "G"
    fasta = tmp_path / "m.fa"
    fasta.write_text(">mix\n" + "\n".join(seq[i : i + 60] for i in range(0, 501, 60)) + "\n")
    counts = prepare(fasta, 500, tmp_path, "P")
    assert (counts.sequences, counts.chunks, counts.frames_kept) == (1, 2, 6)
    nuc = (tmp_path / "P.nucleotide.fa").read_text().splitlines()
    prot = (tmp_path / "P.protein.faa").read_text().splitlines()
    ids = [f">mix_chunk_2{s}{f} chunk_size=500" for s in "FR" for f in (1, 2, 3)]
    assert nuc[0::2] == ids
    assert prot[0::2] == ids
    assert prot[1::2] == ["R" * 83, "A" * 83, "P" * 83, "R" * 83, "G" * 83, "A" * 83]
    assert nuc[1] == "C" + "GCC" * 83
    assert (tmp_path / "P.sequences.tsv").read_text().splitlines()[1] == "mix\t501\t2\t1\t6"


def test_prepare_no_frames_kept_writes_empty_fasta(tmp_path):
    fasta = tmp_path / "s.fa"
    fasta.write_text(">stops\nCTAGCTAGCTAG\n>tiny\nAC\n")
    counts = prepare(fasta, 500, tmp_path, "P")
    assert (counts.sequences, counts.chunks, counts.frames_kept) == (2, 2, 0)
    assert (tmp_path / "P.nucleotide.fa").read_bytes() == b""
    assert (tmp_path / "P.protein.faa").read_bytes() == b""
    assert (tmp_path / "P.sequences.tsv").read_text() == (
        "sequence_id\tlength\tchunks\tchunks_with_frames\tframes_kept\n"
        "stops\t12\t1\t0\t0\n"
        "tiny\t2\t1\t0\t0\n"
    )


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("reads.fa.gz", "reads"),
        ("x.fasta", "x"),
        ("x.fna", "x"),
        ("x.fa", "x"),
        ("sample.v2.fasta.gz", "sample.v2"),
        ("noext", "noext"),
    ],
)
def test_fasta_stem(name, prefix):
    assert fasta_stem(name) == prefix


@pytest.mark.parametrize(("name", "prefix"), [("reads.fa.gz", "reads"), ("x.fna", "x")])
def test_prepare_default_prefix(tmp_path, name, prefix):
    fasta = tmp_path / name
    data = b">orf1\nATGGCCAAAGGG\n"
    fasta.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    outdir = tmp_path / "out"
    prepare(fasta, 500, outdir)
    assert sorted(p.name for p in outdir.iterdir()) == [
        f"{prefix}.nucleotide.fa",
        f"{prefix}.protein.faa",
        f"{prefix}.sequences.tsv",
    ]
    assert (outdir / f"{prefix}.protein.faa").read_text().splitlines()[1] == "MAKG"
