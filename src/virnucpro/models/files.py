"""The models directory: its layout, demo models, downloads and checksums.

Layout of a models directory (``--models DIR``)::

    DIR/esm2.pt or DIR/esm2_*.pt         fair-esm ESM-2 checkpoint (e.g. esm2_t36_3B_UR50D.pt)
    DIR/dnabert-s/                       DNABERT-S Hugging Face directory: config.json,
                                         model.safetensors or pytorch_model.bin, tokenizer.json
    DIR/classifier_300.safetensors       MLP for 300 bp chunks (state dict)
    DIR/classifier_500.safetensors       MLP for 500 bp chunks

What makes loads fast is written only by `virnucpro models prepare` (and `models fetch` /
`demo`, which call it), never by a task: ``.NAME.sha256`` checksums and ESM-2's
ready-to-load copy ``.STEM.bfloat16.safetensors``, each beside the path it describes and
used only while that file version is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import VirnucproError
from virnucpro.fasta import atomic_writer
from virnucpro.models.classifier import MLPClassifier, convert_classifier, write_classifier
from virnucpro.models.dnabert import DnaBertConfig, write_demo_dnabert
from virnucpro.models.esm2 import file_stamp, write_demo_esm2
from virnucpro.models.esm2 import write_cache as write_esm2_cache

MODELS_ENV = "VIRNUCPRO_MODELS"
DNABERT_DIRNAME = "dnabert-s"

ESM2_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t36_3B_UR50D.pt"
DNABERT_URL = "https://huggingface.co/zhihan1996/DNABERT-S/resolve/main/"
DNABERT_FILES = ("config.json", "tokenizer.json", "pytorch_model.bin")
CLASSIFIER_URL = "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/main/{size}_model.pth"


def default_models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "virnucpro" / "models")


def classifier_name(chunk_size: int) -> str:
    return f"classifier_{chunk_size}.safetensors"


@dataclass(frozen=True)
class ModelPaths:
    esm2: Path | None = None
    dnabert: Path | None = None
    classifier: Path | None = None


def _find_esm2(directory: Path) -> Path | None:
    if (directory / "esm2.pt").is_file():
        return directory / "esm2.pt"
    found = sorted(
        p for p in directory.glob("esm2_*.pt") if not p.stem.endswith("-contact-regression")
    )
    return found[0] if found else None


def resolve_models(
    models_dir: Path | None,
    *,
    esm2: Path | None = None,
    dnabert: Path | None = None,
    classifier: Path | None = None,
    chunk_size: int = 500,
    need: tuple[str, ...] = ("esm2", "dnabert", "classifier"),
) -> ModelPaths:
    """Model paths from explicit options, else from the models directory; every needed model
    must exist, or the error says which file is missing and how to fill the directory."""
    explicit = {"esm2": esm2, "dnabert": dnabert, "classifier": classifier}
    directory = Path(models_dir) if models_dir else default_models_dir()
    resolved: dict[str, Path | None] = {}
    for name in need:
        if explicit[name] is not None:
            path = Path(explicit[name])
            if not path.exists():
                raise VirnucproError(f"{path}: no such file or directory")
            resolved[name] = path
            continue
        if not directory.is_dir():
            hint = (
                ""
                if models_dir
                else (
                    f" (the default cache; fill it with 'virnucpro models fetch', or set "
                    f"${MODELS_ENV} / --models, or try 'virnucpro models demo DIR')"
                )
            )
            raise VirnucproError(f"{directory}: models directory not found{hint}")
        if name == "esm2":
            path = _find_esm2(directory)
            if path is None:
                raise VirnucproError(f"{directory}: models directory has no esm2.pt or esm2_*.pt")
        elif name == "dnabert":
            path = directory / DNABERT_DIRNAME
            if not (path / "config.json").is_file():
                raise VirnucproError(f"{directory}: models directory has no {DNABERT_DIRNAME}/")
        else:
            path = directory / classifier_name(chunk_size)
            if not path.is_file():
                raise VirnucproError(
                    f"{directory}: models directory has no {classifier_name(chunk_size)}"
                )
        resolved[name] = path
    return ModelPaths(**resolved)


def _files_under(path: Path) -> list[Path]:
    """A directory model's files, in name order, hidden files skipped."""
    return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))


def _stamp(path: Path) -> str:
    """Identity of a file version: size, mtime, inode and ctime (which no copy keeps); of a
    directory, a digest of its files' names and stamps."""
    if not path.is_dir():
        return file_stamp(path.stat())  # of a symlink: its target's
    listing = "".join(f"{f.relative_to(path).as_posix()}\0{file_stamp(f.stat())}\n"
                      for f in _files_under(path))  # fmt: skip
    return hashlib.sha256(listing.encode()).hexdigest()


def _digest(path: Path) -> str:
    if path.is_dir():
        listing = "".join(f"{f.relative_to(path).as_posix()}\0{_digest(f)}\n"
                          for f in _files_under(path))  # fmt: skip
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    """Where `models prepare` keeps a model's checksum: beside its path (beside a symlink,
    not its target), hidden."""
    return path.with_name(f".{path.name}.sha256")


def _read_sidecar(path: Path) -> str | None:
    try:
        stamp, _, digest = sidecar_path(path).read_text().strip().rpartition(" ")
        return digest if stamp == _stamp(path) and len(digest) == 64 else None
    except OSError:
        return None


def sha256(path: Path) -> str:
    """Checksum of a file; of a directory, the checksum of its files' names and checksums
    (hidden files skipped). Read from the sidecar `models prepare` wrote when that still
    describes this file version, else computed; never written here (tasks must not write
    into a models directory)."""
    path = Path(path)
    return _read_sidecar(path) or _digest(path)


def write_sha256_sidecar(path: Path) -> str:
    """Checksum of a model, kept in its sidecar ``.NAME.sha256`` (written if missing or stale)."""
    path = Path(path)
    if (digest := _read_sidecar(path)) is not None:
        return digest
    stamp = _stamp(path)  # before hashing: a file changed meanwhile is then hashed again
    digest = _digest(path)
    with atomic_writer(sidecar_path(path)) as out:
        out.write(f"{stamp} {digest}\n")
    return digest


def _prepared_file(name: str) -> bool:
    """A checksum sidecar or an ESM-2 load copy (not a temporary file of one)."""
    return (
        name.startswith(".") and ".tmp" not in name and name.endswith((".sha256", ".safetensors"))
    )


def _link_entries(source: Path, target: Path) -> None:
    """``target`` holds an absolute symlink to each entry of ``source``: the models, and the
    checksums and load copies already prepared there (used only while fresh, replaced in
    ``target`` by a real file otherwise); other hidden files are skipped."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.name.startswith(".") and not _prepared_file(entry.name):
            continue
        link, destination = target / entry.name, entry.resolve()
        if link.is_symlink() and Path(os.readlink(link)) == destination:
            continue
        if link.exists() and not link.is_symlink():
            raise VirnucproError(f"{link}: exists and is not a link into {source}")
        tmp = target / f".{entry.name}.link{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(destination)
        os.replace(tmp, link)


def prepare_models(models_dir: Path, outdir: Path | None = None, precision: str = "bf16") -> Path:
    """Make later loads fast, once: the sha256 sidecar of each model and ESM-2's
    ready-to-load copy in ``precision`` (bf16, fp16 or fp32). Written into ``models_dir``
    itself, or with ``outdir`` into that directory, which then also holds absolute symlinks
    to the entries of ``models_dir`` (left untouched: a read-only store works). Returns the
    directory to pass as --models. Nothing else ever writes into a models directory."""
    from virnucpro.device import DTYPES

    source = Path(models_dir)
    if not source.is_dir():
        raise VirnucproError(f"{source}: models directory not found")
    if precision not in DTYPES:
        raise VirnucproError(f"--precision: '{precision}' is not one of {', '.join(DTYPES)}")
    target = source
    if outdir is not None and Path(outdir).resolve() != source.resolve():
        target = Path(outdir)
        _link_entries(source, target)
    elif not os.access(source, os.W_OK):
        raise VirnucproError(f"{source}: not writable (--outdir DIR prepares a linked copy)")
    esm2 = _find_esm2(target)
    models = [esm2, target / DNABERT_DIRNAME, *sorted(target.glob("classifier_*.safetensors"))]
    models = [path for path in models if path is not None and path.exists()]
    if not models:
        raise VirnucproError(f"{source}: no model files (docs/models.md gives the layout)")
    for path in models:
        write_sha256_sidecar(path)
    if esm2 is not None:
        write_esm2_cache(esm2, DTYPES[precision])
    return target


def write_demo_models(directory: Path, seed: int = 0) -> None:
    """Tiny seeded random-weight models in the real formats. Their scores mean nothing."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_esm2(directory / "esm2.pt", seed=seed)
    write_demo_dnabert(directory / DNABERT_DIRNAME, seed=seed)
    dna_dim = DnaBertConfig.from_json(directory / DNABERT_DIRNAME / "config.json").hidden_size
    esm_dim = 64  # write_demo_esm2's default embed_dim
    for offset, size in enumerate((300, 500)):
        torch.manual_seed(seed + 1 + offset)
        model = MLPClassifier(dna_dim + esm_dim).eval()
        with torch.no_grad():  # non-trivial batch-norm statistics, as a trained model has
            model.bn1.running_mean.normal_(0, 0.1)
            model.bn1.running_var.uniform_(0.5, 1.5)
        write_classifier(model, directory / classifier_name(size))


def _download(url: str, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, destination)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise VirnucproError(
            f"{url}: download failed ({reason}); without a network, copy the files into "
            f"{destination.parent} as docs/models.md describes"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch_models(cache: Path) -> list[Path]:
    """Download ESM-2 3B, DNABERT-S and the published classifiers into ``cache`` (skipping
    files already there), converting the classifiers to safetensors."""
    cache = Path(cache)
    (cache / DNABERT_DIRNAME).mkdir(parents=True, exist_ok=True)
    wanted = [(ESM2_URL, cache / Path(ESM2_URL).name)]
    wanted += [(DNABERT_URL + name, cache / DNABERT_DIRNAME / name) for name in DNABERT_FILES]
    for url, destination in wanted:
        if not destination.is_file():
            _download(url, destination)
    for size in (300, 500):
        target = cache / classifier_name(size)
        if not target.is_file():
            original = cache / f"{size}_model.pth"
            if not original.is_file():
                _download(CLASSIFIER_URL.format(size=size), original)
            convert_classifier(original, target)
    return [destination for _, destination in wanted]
