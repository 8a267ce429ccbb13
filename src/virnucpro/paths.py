"""Every file name, suffix and table header of the stage contracts, in one place.

A stage writes and reads its files through these names only, so that the CLI, predict's
workers and the Nextflow tasks agree on them (docs/outputs.md documents each file).
Nothing here touches the disk.
"""

from __future__ import annotations

from pathlib import Path

# split: OUTDIR/shard_00001.fa ... and the manifest of every sequence of every shard
SHARD_PATTERN = "shard_{index:05d}.fa"
MANIFEST = "shards.tsv"
MANIFEST_HEADER = "shard\tsequence_id\tlength\n"

# prepare: PREFIX.nucleotide.fa, PREFIX.protein.faa, PREFIX.sequences.tsv; each prepared
# frame's header is ">ID chunk_size=N"
NUCLEOTIDE = ".nucleotide.fa"
PROTEIN = ".protein.faa"
SEQUENCES = ".sequences.tsv"
SEQUENCES_HEADER = "sequence_id\tlength\tchunks\tchunks_with_frames\tframes_kept\n"
CHUNK_SIZE_NOTE = "chunk_size={chunk_size}"

# embed-dna / embed-protein: PREFIX.dnabert.safetensors, PREFIX.esm2.safetensors
FEATURES = {"dnabert": ".dnabert.safetensors", "esm2": ".esm2.safetensors"}
EMBED_INPUT = {"dnabert": NUCLEOTIDE, "esm2": PROTEIN}

# classify: PREFIX.scores.tsv and PREFIX.scores.json
SCORES = ".scores.tsv"
SCORES_META = ".scores.json"
SCORES_HEADER = "frame_id\tprediction\tscore1\tscore2\n"

# summarize: the run's outputs
RESULTS = "prediction_results.txt"
RESULTS_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHEST_SCORE = "prediction_results_highestscore.csv"
HIGHEST_SCORE_HEADER = "Modified_ID\tIs_Virus\n"
SUMMARY = "virnucpro_summary.tsv"
SUMMARY_HEADER = (
    "sequence_id\tlength\tchunks\tchunks_with_frames\tframes_scored\tviral_chunks\t"
    "viral_fraction\tmax_virus_score\tmean_virus_score\tcall\n"
)
RUN_RECORD = "run.json"

# predict: its failures, and its work directory (owner file, shards, per-shard markers)
FAILED_FILES = "failed_files.txt"
RESULT_FILES = (RESULTS, HIGHEST_SCORE, SUMMARY, RUN_RECORD, FAILED_FILES)
WORK_DIRNAME = "virnucpro-work"
OWNER_FILE = "virnucpro-work.json"
DONE = ".done.json"

# a models directory (docs/models.md)
ESM2_FILE = "esm2.pt"
ESM2_GLOB = "esm2_*.pt"
DNABERT_DIRNAME = "dnabert-s"
CLASSIFIER_PATTERN = "classifier_{chunk_size}.safetensors"
CLASSIFIER_GLOB = "classifier_*.safetensors"
FETCH_MANIFEST = ".fetch.json"

_FASTA_EXTENSIONS = (".fasta", ".fna", ".fas", ".fa", ".faa", ".ffn")


def fasta_stem(path: Path) -> str:
    """The input's name without .gz and a FASTA extension: reads.fa.gz -> reads."""
    name = Path(path).name.removesuffix(".gz")
    for ext in _FASTA_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index)


def shard_prefix(shard: Path) -> str:
    """shard_00001.fa -> shard_00001: the prefix of every file made from the shard."""
    return Path(shard).name.removesuffix(".fa")


def prepared_files(outdir: Path, prefix: str) -> tuple[Path, Path, Path]:
    """What prepare writes: nucleotide frames, protein frames, the per-sequence table."""
    outdir = Path(outdir)
    return (
        outdir / f"{prefix}{NUCLEOTIDE}",
        outdir / f"{prefix}{PROTEIN}",
        outdir / f"{prefix}{SEQUENCES}",
    )


def features_file(kind: str, input_path: Path, outdir: Path) -> Path:
    """The feature file an embed stage writes for a prepared file: PREFIX.nucleotide.fa ->
    PREFIX.dnabert.safetensors (any other name: its FASTA stem)."""
    name, suffix = Path(input_path).name, EMBED_INPUT[kind]
    prefix = name.removesuffix(suffix) if name.endswith(suffix) else fasta_stem(input_path)
    return Path(outdir) / f"{prefix}{FEATURES[kind]}"


def scores_files(outdir: Path, prefix: str) -> tuple[Path, Path]:
    """What classify writes: the frame scores and their record."""
    return Path(outdir) / f"{prefix}{SCORES}", Path(outdir) / f"{prefix}{SCORES_META}"


def shard_results(outdir: Path, prefix: str) -> list[Path]:
    """The three files of a shard that summarize reads: sequences table, scores, record."""
    return [prepared_files(outdir, prefix)[2], *scores_files(outdir, prefix)]


def done_marker(work: Path, prefix: str) -> Path:
    """predict's mark of a finished shard (what it was made with)."""
    return Path(work) / f"{prefix}{DONE}"


def classifier_name(chunk_size: int) -> str:
    return CLASSIFIER_PATTERN.format(chunk_size=chunk_size)


def checksum_sidecar(path: Path) -> Path:
    """Where `models prepare` keeps a model's sha256: beside its path (beside a symlink, not
    its target), hidden."""
    return Path(path).with_name(f".{Path(path).name}.sha256")


def esm2_load_copy(checkpoint: Path, dtype_name: str) -> Path:
    """Where `models prepare` keeps ESM-2's ready-to-load copy in a dtype ("bfloat16"):
    beside the checkpoint's path, hidden."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f".{checkpoint.stem}.{dtype_name}.safetensors")
