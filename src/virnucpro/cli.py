"""The virnucpro command line: option parsing only; each command calls one stage function."""

from __future__ import annotations

import gc
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from virnucpro import __version__
from virnucpro.errors import VirnucproError

app = typer.Typer(
    help="Find viral sequences in nucleotide FASTA with the VirNucPro method "
    "(six-frame translation, DNABERT-S + ESM-2 features, MLP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="Create, download and convert model files.", no_args_is_help=True)
app.add_typer(models_app, name="models", rich_help_panel="Models")

log = logging.getLogger("virnucpro")

END_TO_END, STAGES = "End to end", "Stages (what the Nextflow pipeline runs)"


class ChunkSize(str, Enum):
    c300 = "300"
    c500 = "500"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class FeatureDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


# Options shared by several commands.
ModelsDir = Annotated[
    Path | None,
    typer.Option(
        "--models",
        help="Models directory (docs/models.md). Default: $VIRNUCPRO_MODELS, else "
        "~/.cache/virnucpro/models (filled by 'virnucpro models fetch').",
        show_default=False,
    ),
]
EsmModel = Annotated[
    Path | None,
    typer.Option("--esm-model", help="fair-esm ESM-2 checkpoint (.pt); overrides --models."),
]
DnabertModel = Annotated[
    Path | None,
    typer.Option("--dnabert-model", help="DNABERT-S Hugging Face directory; overrides --models."),
]
ClassifierFile = Annotated[
    Path | None,
    typer.Option("--classifier", help="Classifier (.safetensors); overrides --models."),
]
Device = Annotated[
    str,
    typer.Option(
        help="auto: a free GPU if any (claimed by lock file; predict: every GPU), else the "
        "CPU; cuda: the same but a GPU is required (an error at once without one); cpu; "
        "cuda:N: that GPU, unclaimed."
    ),
]
PrecisionOpt = Annotated[
    Precision, typer.Option(help="auto = bf16 on GPUs of compute capability >= 8.0, else fp32.")
]
ChunkSizeOpt = Annotated[
    ChunkSize, typer.Option("--chunk-size", help="Chunk length in bp (300 or 500).")
]
Outdir = Annotated[Path, typer.Option("--outdir", "-o", help="Output directory.")]
FeatureDtypeOpt = Annotated[
    FeatureDtype,
    typer.Option("--feature-dtype", help="Storage precision of feature files."),
]
CompileOpt = Annotated[
    bool,
    typer.Option(help="torch.compile the layers: faster on a GPU, after a warm-up at load."),
]
Threads = Annotated[
    int | None,
    typer.Option(min=1, help="CPU threads of torch's operations. Default: torch's choice."),
]
ThreadsUnused = Annotated[
    int | None,
    typer.Option(min=1, help="Accepted so that every stage takes it; this one runs on one thread."),
]
Threshold = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="A sequence is called virus when at least this fraction of its scored chunks "
        "is viral.",
    ),
]


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"virnucpro {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Also write the log to this file.")
    ] = None,
) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s virnucpro %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


@app.command(rich_help_panel=END_TO_END)
def predict(
    input: Annotated[Path, typer.Argument(help="Nucleotide FASTA (plain or .gz).")],
    outdir: Outdir,
    models: ModelsDir = None,
    esm_model: EsmModel = None,
    dnabert_model: DnabertModel = None,
    classifier: ClassifierFile = None,
    chunk_size: ChunkSizeOpt = ChunkSize.c500,
    device: Device = "auto",
    precision: PrecisionOpt = Precision.auto,
    shard_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Bases per internal shard: bounds memory; the next shard is prepared while "
            "the GPU embeds this one.",
        ),
    ] = 500_000,
    compile: Annotated[
        bool,
        typer.Option(
            help="torch.compile ESM-2's layers (most of the GPU time): faster on a GPU, after "
            "a warm-up at load. DNABERT-S stays eager here (its compile costs more than it "
            "saves below ~1 Gbp per GPU; embed-dna --compile has it)."
        ),
    ] = False,
    gpus: Annotated[
        str | None, typer.Option(help="Use only these GPUs, e.g. 0,2. Default: every visible GPU.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes on a machine without GPUs.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads per worker. Default: the cores divided among the workers. "
            "Results are bit-identical for any --workers at the same --threads.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Reuse the shards an earlier run of this input, models and parameters finished "
            "(in OUTDIR/work)."
        ),
    ] = False,
    esm_batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="ESM-2 tokens per batch. Default: sized from free GPU memory."),
    ] = None,
    dna_batch_size: Annotated[
        int | None, typer.Option(min=1, help="DNABERT-S tokens per batch.")
    ] = None,
    threshold: Threshold = 0.5,
    feature_dtype: FeatureDtypeOpt = FeatureDtype.float16,
    keep_intermediate: Annotated[
        bool, typer.Option(help="Keep shards, prepared frames and features in OUTDIR/work.")
    ] = False,
) -> None:
    """Run every stage on this machine, on all its GPUs: FASTA in, viral calls out.

    Exit status 0: all done; 2: bad input or models (nothing written); 3: some shards failed
    (listed in OUTDIR/failed_files.txt, their sequences 'unfinished'; rerun with --resume)."""
    from virnucpro.models.files import resolve_models
    from virnucpro.predict import predict as run_predict

    paths = resolve_models(
        models,
        esm2=esm_model,
        dnabert=dnabert_model,
        classifier=classifier,
        chunk_size=int(chunk_size.value),
    )
    result = run_predict(
        input,
        outdir,
        paths,
        chunk_size=int(chunk_size.value),
        device=device,
        precision=precision.value,
        shard_size=shard_size,
        esm_batch_tokens=esm_batch_size,
        dna_batch_tokens=dna_batch_size,
        threshold=threshold,
        feature_dtype=feature_dtype.value,
        keep_work=keep_intermediate,
        compile=compile,
        gpus=gpus,
        workers=workers,
        resume=resume,
        threads=threads,
    )
    if result.failed:
        if not result.outputs:
            log.error("every shard failed: no summary written")
        print(
            f"virnucpro: error: {result.failed} of {result.shards} shard(s) failed; see "
            f"{outdir / 'failed_files.txt'}",
            file=sys.stderr,
        )
        raise typer.Exit(3)


@app.command(rich_help_panel=STAGES)
def split(
    input: Annotated[Path, typer.Argument(help="Nucleotide FASTA (plain or .gz).")],
    shard_size: Annotated[
        int, typer.Option("--shard-size", min=1, help="Bases per shard (records are never cut).")
    ] = 20_000_000,
    outdir: Outdir = Path("shards"),
    threads: ThreadsUnused = None,
) -> None:
    """Cut a FASTA into length-balanced shards: shard_00001.fa, shard_00002.fa, ..."""
    from virnucpro.split import split as run_split

    shards = run_split(input, shard_size, outdir)
    log.info("%s: %d shard(s) in %s", input, len(shards), outdir)


@app.command(rich_help_panel=STAGES)
def prepare(
    input: Annotated[Path, typer.Argument(help="Nucleotide FASTA (plain or .gz).")],
    chunk_size: ChunkSizeOpt = ChunkSize.c500,
    outdir: Outdir = Path("."),
    prefix: Annotated[
        str | None, typer.Option(help="Output name prefix. Default: the input name.")
    ] = None,
    threads: ThreadsUnused = None,
) -> None:
    """Chunk, translate in six frames, keep frames without a stop codon.

    Writes PREFIX.nucleotide.fa, PREFIX.protein.faa and PREFIX.sequences.tsv."""
    from virnucpro.prepare import prepare as run_prepare

    counts = run_prepare(input, int(chunk_size.value), outdir, prefix)
    log.info(
        "%s: %d sequences, %d chunks, %d frames kept",
        input, counts.sequences, counts.chunks, counts.frames_kept,
    )  # fmt: skip


def _embed(
    kind: str,
    input: Path,
    outdir: Path,
    model_path: Path,
    device: str,
    precision: Precision,
    batch: int | None,
    feature_dtype: FeatureDtype,
    compile: bool = False,
    threads: int | None = None,
) -> None:
    from virnucpro.embed import embed_file, load_model

    _set_threads(threads)
    loaded = load_model(kind, model_path, device, precision.value, compile=compile)
    embed_file(loaded, input, outdir, batch, feature_dtype.value)


@app.command("embed-dna", rich_help_panel=STAGES)
def embed_dna(
    input: Annotated[Path, typer.Argument(help="PREFIX.nucleotide.fa from prepare.")],
    outdir: Outdir = Path("."),
    models: ModelsDir = None,
    dnabert_model: DnabertModel = None,
    device: Device = "auto",
    precision: PrecisionOpt = Precision.auto,
    dna_batch_size: Annotated[int | None, typer.Option(min=1, help="Tokens per batch.")] = None,
    feature_dtype: FeatureDtypeOpt = FeatureDtype.float16,
    compile: CompileOpt = False,
    threads: Threads = None,
) -> None:
    """DNABERT-S features of prepared frames -> PREFIX.dnabert.safetensors."""
    from virnucpro.models.files import resolve_models

    path = resolve_models(models, dnabert=dnabert_model, need=("dnabert",)).dnabert
    _embed("dnabert", input, outdir, path, device, precision, dna_batch_size, feature_dtype,
           compile, threads)  # fmt: skip


@app.command("embed-protein", rich_help_panel=STAGES)
def embed_protein(
    input: Annotated[Path, typer.Argument(help="PREFIX.protein.faa from prepare.")],
    outdir: Outdir = Path("."),
    models: ModelsDir = None,
    esm_model: EsmModel = None,
    device: Device = "auto",
    precision: PrecisionOpt = Precision.auto,
    esm_batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Tokens per batch. Default: sized from free GPU memory."),
    ] = None,
    feature_dtype: FeatureDtypeOpt = FeatureDtype.float16,
    compile: CompileOpt = False,
    threads: Threads = None,
) -> None:
    """ESM-2 features of prepared frames -> PREFIX.esm2.safetensors."""
    from virnucpro.models.files import resolve_models

    path = resolve_models(models, esm2=esm_model, need=("esm2",)).esm2
    _embed("esm2", input, outdir, path, device, precision, esm_batch_size, feature_dtype, compile,
           threads)  # fmt: skip


@app.command(rich_help_panel=STAGES)
def classify(
    dnabert_features: Annotated[Path, typer.Argument(help="PREFIX.dnabert.safetensors")],
    esm2_features: Annotated[Path, typer.Argument(help="PREFIX.esm2.safetensors")],
    models: ModelsDir = None,
    classifier: ClassifierFile = None,
    chunk_size: ChunkSizeOpt = ChunkSize.c500,
    outdir: Outdir = Path("."),
    threads: Threads = None,
) -> None:
    """Join features by frame ID and score each frame -> PREFIX.scores.tsv + .scores.json."""
    from virnucpro.classify import classify as run_classify
    from virnucpro.models.classifier import load_classifier
    from virnucpro.models.files import resolve_models

    _set_threads(threads)
    size = int(chunk_size.value)
    path = resolve_models(models, classifier=classifier, chunk_size=size, need=("classifier",))
    model = load_classifier(path.classifier)
    run_classify(dnabert_features, esm2_features, model, path.classifier, size, outdir)


@app.command(rich_help_panel=STAGES)
def summarize(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Every shard's .sequences.tsv, .scores.tsv and .scores.json."),
    ] = None,
    outdir: Outdir = Path("."),
    threshold: Threshold = 0.5,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="split's shards.tsv: every shard it lists is expected; the sequences of a "
            "shard without results are 'unfinished' (a task that failed and was ignored).",
        ),
    ] = None,
    threads: ThreadsUnused = None,
) -> None:
    """Shard scores -> prediction_results.txt, prediction_results_highestscore.csv,
    virnucpro_summary.tsv, run.json."""
    from virnucpro.summarize import summarize as run_summarize

    run_summarize(files or [], outdir, threshold, manifest=manifest)


@models_app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the demo models.")],
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
    threads: Threads = None,
) -> None:
    """Write tiny random-weight models in the real formats (scores are meaningless), prepared
    as 'models prepare' does."""
    from virnucpro.models.files import prepare_models, write_demo_models

    _set_threads(threads)
    write_demo_models(directory, seed)
    prepare_models(directory)
    log.info("demo models in %s (random weights: for tests and trials only)", directory)


@models_app.command()
def fetch(
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Models directory to fill. Default: $VIRNUCPRO_MODELS or "
            "~/.cache/virnucpro/models."
        ),  # fmt: skip
    ] = None,
    threads: Threads = None,
) -> None:
    """Download ESM-2 3B, DNABERT-S and the published classifiers (about 6 GB), then prepare
    them as 'models prepare' does."""
    from virnucpro.models.files import default_models_dir, fetch_models, prepare_models

    _set_threads(threads)
    target = cache or default_models_dir()
    fetch_models(target)
    prepare_models(target)
    log.info("models ready in %s", target)


class CachePrecision(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


@models_app.command("prepare")
def models_prepare(
    directory: Annotated[Path, typer.Argument(help="Models directory (docs/models.md).")],
    outdir: Annotated[
        Path | None,
        typer.Option(
            "--outdir",
            "-o",
            help="Prepare into this directory instead: absolute links to DIRECTORY's models "
            "beside the checksums and the ESM-2 copy; DIRECTORY is left untouched (a "
            "read-only or shared store). Use it as --models.",
        ),
    ] = None,
    precision: Annotated[
        CachePrecision,
        typer.Option(help="Precision of the ESM-2 copy: the one the GPU tasks run in."),
    ] = CachePrecision.bf16,
    threads: Threads = None,
) -> None:
    """Write, once, each model's sha256 and ESM-2's ready-to-load copy (what makes every
    task's start fast); no other command writes into a models directory."""
    from virnucpro.models.files import prepare_models

    _set_threads(threads)
    target = prepare_models(directory, outdir, precision.value)
    log.info("models prepared in %s", target)


@models_app.command("convert-classifier")
def convert_classifier(
    source: Annotated[Path, typer.Argument(help="Original 300_model.pth or 500_model.pth.")],
    destination: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
) -> None:
    """Turn an original pickled classifier into a safetensors state dict (no code runs)."""
    from virnucpro.models.classifier import convert_classifier as run_convert

    model = run_convert(source, destination)
    log.info("%s -> %s (input %d features)", source, destination, model.input_dim)


@app.command(rich_help_panel=STAGES)
def versions(
    indent: Annotated[int, typer.Option(min=0, help="Spaces before each line.")] = 4,
) -> None:
    """Versions of what a pipeline task ran (virnucpro, Python, torch, CUDA, NVIDIA driver) as
    YAML lines for versions.yml."""
    from virnucpro.versions import versions_yaml

    typer.echo(versions_yaml(indent), nl=False)


def main() -> None:
    """Entry point: one-line errors with exit status 2, no tracebacks for user errors.

    Usage errors are click's own (message and exit status 2, standalone mode)."""
    try:
        app()
        return
    except VirnucproError as e:
        print(f"virnucpro: error: {e}", file=sys.stderr)
        status = 2
    except OSError as e:  # e.g. an output directory that is a file, an unwritable log file
        where = f"{e.filename}: " if e.filename else ""
        print(f"virnucpro: error: {where}{e.strerror or e}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("virnucpro: interrupted", file=sys.stderr)
        status = 130
    # The traceback kept the worker queues of predict alive; free them now, or Python's
    # resource tracker warns about leaked semaphores at exit.
    gc.collect()
    sys.exit(status)
