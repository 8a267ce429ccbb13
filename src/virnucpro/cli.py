"""The virnucpro command line: option parsing only; each command calls one stage function."""

from __future__ import annotations

import gc
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer._click import exceptions as typer_exceptions  # typer vendors its own click

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

ROOT_OPTIONS = ("-q", "--quiet", "--log-file", "--version")
END_TO_END, STAGES = "End to end", "Stages (what the Nextflow pipeline runs)"
# Option groups of a command's --help
IO, MODEL_FILES, HARDWARE, RUN, TUNING = ("Input and output", "Models", "Hardware", "Resume",
                                          "Tuning")  # fmt: skip


class ChunkSize(str, Enum):
    c300 = "300"
    c500 = "500"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"


class FeatureDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


# Options shared by several commands.
ModelsDir = Annotated[
    Path | None,
    typer.Option(
        "--models",
        metavar="DIR",
        help="Models directory (docs/models.md). Default: $VIRNUCPRO_MODELS, else "
        "~/.cache/virnucpro/models (filled by 'virnucpro models fetch').",
        show_default=False,
        rich_help_panel=MODEL_FILES,
    ),
]
EsmModel = Annotated[
    Path | None,
    typer.Option(
        "--esm-model",
        metavar="FILE",
        rich_help_panel=MODEL_FILES,
        help="fair-esm ESM-2 checkpoint (.pt); overrides --models.",
    ),
]
DnabertModel = Annotated[
    Path | None,
    typer.Option(
        "--dnabert-model",
        metavar="DIR",
        rich_help_panel=MODEL_FILES,
        help="DNABERT-S Hugging Face directory; overrides --models.",
    ),
]
ClassifierFile = Annotated[
    Path | None,
    typer.Option(
        "--classifier",
        metavar="FILE",
        rich_help_panel=MODEL_FILES,
        help="Classifier (.safetensors); overrides --models.",
    ),
]
Device = Annotated[
    str,
    typer.Option(
        metavar="auto|cuda|cpu|cuda:N",
        rich_help_panel=HARDWARE,
        help="auto: a free GPU if any (claimed by lock file; predict: every GPU), else the "
        "CPU; cuda: the same but a GPU is required (an error at once without one); cpu; "
        "cuda:N: that GPU, unclaimed.",
    ),
]
AUTO_HELP = "auto = bf16 on GPUs of compute capability >= 8.0, else fp32."
FP8_HELP = (
    "fp8: ESM-2's linear layers in FP8 on GPUs of compute capability >= 8.9 (Ada, Hopper), "
    "DNABERT-S at bf16; never chosen by auto; use with --compile for speed; check agreement "
    "first with 'virnucpro check-precision'."
)
PrecisionOpt = Annotated[
    Precision, typer.Option(rich_help_panel=HARDWARE, help=f"{AUTO_HELP} {FP8_HELP}")
]
ChunkSizeOpt = Annotated[
    ChunkSize, typer.Option("--chunk-size", rich_help_panel=IO, help="Chunk length in bp.")
]
Outdir = Annotated[
    Path,
    typer.Option("--outdir", "-o", metavar="DIR", rich_help_panel=IO, help="Output directory."),
]
FeatureDtypeOpt = Annotated[
    FeatureDtype,
    typer.Option(
        "--feature-dtype", rich_help_panel=TUNING, help="Storage precision of feature files."
    ),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        rich_help_panel=HARDWARE,
        help="torch.compile the layers: faster on a GPU, after a warm-up at load.",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        metavar="N",
        rich_help_panel=HARDWARE,
        help="CPU threads of torch's operations. Default: torch's choice.",
    ),
]
ThreadsUnused = Annotated[
    int | None,
    typer.Option(
        min=1,
        metavar="N",
        rich_help_panel=HARDWARE,
        help="Accepted so that every stage takes it; this one runs on one thread.",
    ),
]
Threshold = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        metavar="0..1",
        rich_help_panel=IO,
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
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:  # everything, whatever --quiet says
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO,
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
    threshold: Threshold = 0.5,
    device: Device = "auto",
    gpus: Annotated[
        str | None,
        typer.Option(
            metavar="0,2",
            rich_help_panel=HARDWARE,
            help="Use only these GPUs. Default: every visible GPU.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            rich_help_panel=HARDWARE,
            help="Worker processes on a machine without GPUs.",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            rich_help_panel=HARDWARE,
            help="CPU threads per worker. Default: the cores divided among the workers. "
            "Results are bit-identical for any --workers at the same --threads.",
        ),
    ] = None,
    precision: PrecisionOpt = Precision.auto,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            rich_help_panel=HARDWARE,
            help="torch.compile ESM-2's layers (most of the GPU time): faster on a GPU, after "
            "a warm-up at load. DNABERT-S stays eager here (embed-dna --compile has it).",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            rich_help_panel=RUN,
            help="Reuse the shards an earlier run of this input, models and parameters "
            "finished (kept in OUTDIR/virnucpro-work).",
        ),
    ] = False,
    keep_intermediate: Annotated[
        bool,
        typer.Option(
            "--keep-intermediate",
            rich_help_panel=RUN,
            help="Keep shards, prepared frames and features in OUTDIR/virnucpro-work.",
        ),
    ] = False,
    shard_size: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="BP",
            rich_help_panel=TUNING,
            help="Bases per internal shard: bounds memory; the next shard is prepared while "
            "the GPU embeds this one.",
        ),
    ] = 500_000,
    esm_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="TOKENS",
            rich_help_panel=TUNING,
            help="ESM-2 tokens per batch. Default: sized from free GPU memory.",
        ),
    ] = None,
    dna_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="TOKENS", rich_help_panel=TUNING, help="DNABERT-S tokens per batch."
        ),
    ] = None,
    feature_dtype: FeatureDtypeOpt = FeatureDtype.float16,
) -> None:
    """Run every stage on this machine, on all its GPUs: FASTA in, viral calls out.

    Exit status 0: all done. 2: bad input, options or models (nothing written). 3: some
    shards failed (listed in OUTDIR/failed_files.txt, their sequences 'unfinished'; rerun
    with --resume). 130: interrupted (rerun with --resume to continue)."""
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
        _report_error(
            f"{result.failed} of {result.shards} shard(s) failed; see "
            f"{outdir / 'failed_files.txt'}; rerun the same command with --resume"
        )
        raise typer.Exit(3)


class ComparedPrecision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"


class ReferencePrecision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command("check-precision", rich_help_panel=END_TO_END)
def check_precision(
    input: Annotated[Path, typer.Argument(help="Nucleotide FASTA (plain or .gz).")],
    precision: Annotated[
        list[ComparedPrecision] | None,
        typer.Option(
            "--precision",
            rich_help_panel=HARDWARE,
            help="A precision to compare with the reference; repeat for more. Default: bf16 "
            "and fp8 (fp8 left out on a GPU without FP8 tensor cores; asked for there, an "
            "error). On the CPU fp8 is a simulation through torch's CPU FP8 kernel: the GPU's "
            "FP8 quantization with exact accumulation, slowly (its agreement is close to an FP8 "
            "GPU's, its time is not).",
            show_default=False,
        ),
    ] = None,
    reference: Annotated[
        ReferencePrecision,
        typer.Option(
            rich_help_panel=HARDWARE,
            help="Precision compared against (DNABERT-S runs at it for every row).",
        ),  # fmt: skip
    ] = ReferencePrecision.fp32,
    sample: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            rich_help_panel=IO,
            help="Sequences to check, drawn from the whole input (seeded reservoir sampling: "
            "each sequence equally likely, wherever it is in the file; all of them if fewer).",
        ),
    ] = 200,
    seed: Annotated[int, typer.Option(rich_help_panel=IO, help="Seed of the sample.")] = 0,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", metavar="PATH", rich_help_panel=IO, help="Also write the report as JSON."
        ),
    ] = None,
    models: ModelsDir = None,
    esm_model: EsmModel = None,
    dnabert_model: DnabertModel = None,
    classifier: ClassifierFile = None,
    chunk_size: ChunkSizeOpt = ChunkSize.c500,
    device: Device = "auto",
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            rich_help_panel=HARDWARE,
            help="torch.compile ESM-2's layers in every pass (as predict --compile): the "
            "times of the compiled model; the agreement can differ slightly.",
        ),
    ] = False,
    threads: Threads = None,
) -> None:
    """Before relying on --precision fp8 (or bf16): how far ESM-2 at that precision moves the
    features and the calls from a reference (fp32), on a sample of your input.

    The sample is prepared as predict prepares it; DNABERT-S embeds it once, ESM-2 once at
    the reference and once per compared precision; the classifier scores each. One row per
    compared precision: per-frame cosine of the ESM-2 features against the reference (min,
    mean), the largest change of a virus score, frame calls and chunk calls changed (made as
    classify and summarize make them), and the seconds of its ESM-2 pass. Nothing is
    written but --json. Exit status 0: it ran (it reports, it does not judge; its last line
    says whether fp8 meets the project's bar: min cosine >= 0.9995 and at most 0.1% of chunk
    calls changed). 2: bad input, options or models."""
    from virnucpro.check_precision import check_precision as run_check
    from virnucpro.check_precision import format_report
    from virnucpro.models.files import resolve_models

    _set_threads(threads)
    size = int(chunk_size.value)
    paths = resolve_models(models, esm2=esm_model, dnabert=dnabert_model, classifier=classifier,
                           chunk_size=size)  # fmt: skip
    report = run_check(
        input, paths, chunk_size=size, sample=sample,
        precisions=[p.value for p in precision] if precision else None,
        reference=reference.value, device=device, compile=compile, seed=seed, json_path=json_out,
    )  # fmt: skip
    typer.echo(format_report(report), nl=False)


@app.command(rich_help_panel=STAGES)
def split(
    input: Annotated[Path, typer.Argument(help="Nucleotide FASTA (plain or .gz).")],
    shard_size: Annotated[
        int,
        typer.Option(
            "--shard-size",
            min=1,
            metavar="BP",
            rich_help_panel=TUNING,
            help="Bases per shard (records are never cut).",
        ),  # fmt: skip
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
    allow_nucleotide_letters: bool = False,
) -> None:
    from virnucpro.embed import check_input, check_output, embed_file, load_embedder

    _set_threads(threads)
    # what can fail without the model fails before it is loaded
    check_output(kind, input, outdir)
    check_input(kind, input, allow_nucleotide_letters)
    embedder = load_embedder(kind, model_path, device, precision.value, compile=compile)
    embed_file(embedder, input, outdir, batch, feature_dtype.value,
               allow_nucleotide_letters=allow_nucleotide_letters)  # fmt: skip


@app.command("embed-dna", rich_help_panel=STAGES)
def embed_dna(
    input: Annotated[Path, typer.Argument(help="PREFIX.nucleotide.fa from prepare.")],
    outdir: Outdir = Path("."),
    models: ModelsDir = None,
    dnabert_model: DnabertModel = None,
    device: Device = "auto",
    precision: Annotated[
        Precision,
        typer.Option(
            rich_help_panel=HARDWARE,
            help=f"{AUTO_HELP} fp8 runs bf16 here (FP8 is ESM-2's: one --precision fp8 for both "
            "embedding stages; classify takes ESM-2 fp8 with DNABERT-S bf16 features).",
        ),
    ] = Precision.auto,
    dna_batch_size: Annotated[
        int | None,
        typer.Option(min=1, metavar="TOKENS", rich_help_panel=TUNING, help="Tokens per batch."),
    ] = None,
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
        typer.Option(
            min=1,
            metavar="TOKENS",
            rich_help_panel=TUNING,
            help="Tokens per batch. Default: sized from free GPU memory.",
        ),  # fmt: skip
    ] = None,
    feature_dtype: FeatureDtypeOpt = FeatureDtype.float16,
    compile: CompileOpt = False,
    threads: Threads = None,
    allow_nucleotide_letters: Annotated[
        bool,
        typer.Option(
            "--allow-nucleotide-letters",
            help="Embed the input even if every sequence is only A/C/G/T/N (by default such a "
            "file is refused as nucleotides given by mistake).",
        ),
    ] = False,
) -> None:
    """ESM-2 features of prepared frames -> PREFIX.esm2.safetensors."""
    from virnucpro.models.files import resolve_models

    path = resolve_models(models, esm2=esm_model, need=("esm2",)).esm2
    _embed("esm2", input, outdir, path, device, precision, esm_batch_size, feature_dtype, compile,
           threads, allow_nucleotide_letters)  # fmt: skip


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
    from virnucpro.models.demo import write_demo_models
    from virnucpro.models.files import prepare_models

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
        ),
    ] = None,
    threads: Threads = None,
) -> None:
    """Download ESM-2 3B, DNABERT-S and the published classifiers (about 6 GB) from pinned
    revisions, check every file's checksum before it takes its place (an interrupted download
    resumes on the next run), then prepare them as 'models prepare' does."""
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
    fp8 = "fp8"


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
        typer.Option(
            help="Precision of the ESM-2 copy: the one the GPU tasks run in (fp8: the bf16 "
            "copy, which --precision fp8 loads and quantizes)."
        ),
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
    """Versions of what a pipeline task ran, as YAML lines for versions.yml.

    virnucpro, Python, torch, CUDA and the NVIDIA driver."""
    from virnucpro.versions import versions_yaml

    typer.echo(versions_yaml(indent), nl=False)


def _report_error(message: str) -> None:
    """The one-line error on stderr, and in the --log-file too (which keeps what the console
    showed)."""
    line = f"virnucpro: error: {message}"
    print(line, file=sys.stderr)
    record = logging.makeLogRecord({"name": "virnucpro", "levelno": logging.ERROR,
                                    "levelname": "ERROR", "msg": message})  # fmt: skip
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _usage_message(e: typer_exceptions.UsageError) -> str:
    """click's message on one line, pointing at the command's --help."""
    message = " ".join(e.format_message().replace("Value error, ", "").split())
    if isinstance(e, typer_exceptions.NoSuchOption) and e.option_name in ROOT_OPTIONS:
        message += f" (it goes before the command: virnucpro {e.option_name} COMMAND ...)"
    command = e.ctx.command_path if e.ctx is not None else "virnucpro"
    return f"{message} (see '{command} -h')"


def main() -> None:
    """Entry point: every error is one line `virnucpro: error: ...` with no traceback; exit
    status 2 for usage, input and model errors, 130 when interrupted."""
    try:
        status = app(standalone_mode=False, prog_name="virnucpro")
        status = status if isinstance(status, int) else 0
    except typer_exceptions.NoArgsIsHelpError:  # the help was shown
        status = 2
    except typer_exceptions.UsageError as e:  # typer's own click
        _report_error(_usage_message(e))
        status = 2
    except VirnucproError as e:
        _report_error(str(e))
        status = 2
    except OSError as e:  # e.g. an unwritable log file
        where = f"{e.filename}: " if e.filename else ""
        _report_error(f"{where}{e.strerror or e}")
        status = 2
    except (KeyboardInterrupt, typer.Abort):
        status = 130
    if status == 130:  # typer turns Ctrl-C into exit status 130
        _report_error("interrupted")
    # The traceback kept the worker queues of predict alive; free them now, or Python's
    # resource tracker warns about leaked semaphores at exit.
    gc.collect()
    sys.exit(status)
