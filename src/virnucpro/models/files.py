"""The models directory: its layout, downloads, checksums and `models prepare`.

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

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import VirnucproError
from virnucpro.fileio import atomic_writer, stamp
from virnucpro.fileio import sha256 as file_sha256
from virnucpro.models.classifier import convert_classifier
from virnucpro.models.load import write_cache as write_esm2_cache
from virnucpro.paths import (
    CLASSIFIER_GLOB,
    DNABERT_DIRNAME,
    ESM2_FILE,
    ESM2_GLOB,
    FETCH_MANIFEST,
    checksum_sidecar,
    classifier_name,
)

log = logging.getLogger("virnucpro")

MODELS_ENV = "VIRNUCPRO_MODELS"

# Pinned sources of `models fetch`: fixed revisions, and what each file must hash to. Only
# values found in a public source are pinned (named beside each); docs/models.md lists them.
#
# ESM-2 3B. fair-esm publishes no checksums; this sha256 and size are the ones recorded
# independently by several public projects that pin this exact file (found by code search: a
# SimpleFold asset manifest, "esm2_t36_3B_UR50D.pt | 5678116398 | 7de8b408...", a Protenix
# download manifest `_PROTENIX_ESM2_3B_SHA256`, an ESMFold-baseline README, a geoaudit
# PLM script `ESM_SHA256`), all with the same value.
ESM2_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t36_3B_UR50D.pt"
ESM2_SHA256 = "7de8b4082ba15891959ab368b77ce3886697af1efb16d3c9e9e7b0c5d3f07500"
ESM2_SIZE = 5678116398
# DNABERT-S: Hugging Face zhihan1996/DNABERT-S at commit 00e47f96 (the revision pinned by
# MultiMolecule's upstream DNABERT-S fixture generator, UPSTREAM_COMMIT, and by other pinned
# users); the sizes and sha256 of the three files at that commit are those of a pinned GENEB
# DNABERT-S oracle script (SOURCE_FILES, which lists every file of that commit); the
# pytorch_model.bin sha256 is also MultiMolecule's CHECKPOINT_SHA256.
DNABERT_REPO = "zhihan1996/DNABERT-S"
DNABERT_REVISION = "00e47f96cdea35e4b6f5df89e5419cbe47d490c6"
DNABERT_URL = f"https://huggingface.co/{DNABERT_REPO}/resolve/{DNABERT_REVISION}/"
DNABERT_PINS = {  # name: (size, sha256)
    "config.json": (1025, "d54c142114563aa34ef7c2b54ccc921d08e50cd7c3cd69c439d5e0d2bbcfcdee"),
    "tokenizer.json": (
        168203,
        "667f5a0e6e9630f7052b004784dda7c7aeba395cc4ca3c01b11b02e6aa29d7b1",
    ),
    "pytorch_model.bin": (
        468320053,
        "f3cfc3d0541859df64759e758cc4bc40fe1d5760799a7d098a9f9f09501c1e5f",
    ),
}
DNABERT_FILES = tuple(DNABERT_PINS)
# Classifiers: github.com/Li-Jing-1997/VirNucPro at commit 0f93f275 (2025-04-01, the newest
# commit seen); plain git blobs (no LFS), so the pin is their git blob ids from that commit's
# tree (`git ls-tree`), unchanged since the first commit 0b7e6f1f. No sha256 or size was
# found published anywhere: the sha256 is recorded at download (.fetch.json) and logged.
CLASSIFIER_REVISION = "0f93f2755a7ea1acd3ff1bcf182892f960ef3326"
CLASSIFIER_URL = (
    "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/"
    + CLASSIFIER_REVISION
    + "/{size}_model.pth"
)
CLASSIFIER_GIT_BLOBS = {
    300: "a0b5b85e7c1e44f00cde146d091beb82b2c8e855",
    500: "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d",
}


def default_models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "virnucpro" / "models")


@dataclass(frozen=True)
class ModelPaths:
    esm2: Path | None = None
    dnabert: Path | None = None
    classifier: Path | None = None


def _find_esm2(directory: Path) -> Path | None:
    if (directory / ESM2_FILE).is_file():
        return directory / ESM2_FILE
    found = sorted(
        p for p in directory.glob(ESM2_GLOB) if not p.stem.endswith("-contact-regression")
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


def _read_sidecar(path: Path) -> str | None:
    try:
        recorded, _, digest = checksum_sidecar(path).read_text().strip().rpartition(" ")
        return digest if recorded == stamp(path) and len(digest) == 64 else None
    except OSError:
        return None


def sha256(path: Path) -> str:
    """Checksum of a file; of a directory, the checksum of its files' names and checksums
    (hidden files skipped). Read from the sidecar `models prepare` wrote when that still
    describes this file version, else computed; never written here (tasks must not write
    into a models directory)."""
    path = Path(path)
    return _read_sidecar(path) or file_sha256(path)


def write_sha256_sidecar(path: Path) -> str:
    """Checksum of a model, kept in its sidecar ``.NAME.sha256`` (written if missing or stale)."""
    path = Path(path)
    if (digest := _read_sidecar(path)) is not None:
        return digest
    version = stamp(path)  # before hashing: a file changed meanwhile is then hashed again
    digest = file_sha256(path)
    with atomic_writer(checksum_sidecar(path)) as out:
        out.write(f"{version} {digest}\n")
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
    ready-to-load copy in ``precision`` (bf16, fp16 or fp32; fp8: the bf16 copy, which fp8
    loads and quantizes). Written into ``models_dir`` itself, or with ``outdir`` into that
    directory, which then also holds absolute symlinks to the entries of ``models_dir``
    (left untouched: a read-only store works). Returns the directory to pass as --models.
    Nothing else ever writes into a models directory."""
    from virnucpro.device import DTYPES, model_dtype

    source = Path(models_dir)
    if not source.is_dir():
        raise VirnucproError(f"{source}: models directory not found")
    if precision not in (*DTYPES, "fp8"):
        raise VirnucproError(f"--precision: '{precision}' is not one of {', '.join(DTYPES)}, fp8")
    target = source
    if outdir is not None and Path(outdir).resolve() != source.resolve():
        target = Path(outdir)
        _link_entries(source, target)
    elif not os.access(source, os.W_OK):
        raise VirnucproError(f"{source}: not writable (--outdir DIR prepares a linked copy)")
    esm2 = _find_esm2(target)
    models = [esm2, target / DNABERT_DIRNAME, *sorted(target.glob(CLASSIFIER_GLOB))]
    models = [path for path in models if path is not None and path.exists()]
    if not models:
        raise VirnucproError(f"{source}: no model files (docs/models.md gives the layout)")
    for path in models:
        write_sha256_sidecar(path)
    if esm2 is not None:
        write_esm2_cache(esm2, model_dtype(precision))
    return target


@dataclass(frozen=True)
class Remote:
    """One file `models fetch` downloads, and what it must hash to."""

    url: str
    path: str  # relative to the models directory
    sha256: str | None = None
    size: int | None = None
    git_sha1: str | None = None  # git blob id, where that is what is pinned
    classifier: int | None = None  # the chunk size of a classifier .pth

    @property
    def check(self) -> str:
        if self.sha256:
            return "pinned sha256 and size"
        return "pinned git blob sha1 (sha256 recorded at download)"


def remotes() -> list[Remote]:
    """Every file `models fetch` downloads, with its pins."""
    found = [Remote(ESM2_URL, Path(ESM2_URL).name, ESM2_SHA256, ESM2_SIZE)]
    found += [
        Remote(DNABERT_URL + name, f"{DNABERT_DIRNAME}/{name}", digest, size)
        for name, (size, digest) in DNABERT_PINS.items()
    ]
    found += [
        Remote(
            CLASSIFIER_URL.format(size=size), f"{size}_model.pth", git_sha1=blob, classifier=size
        )
        for size, blob in CLASSIFIER_GIT_BLOBS.items()
    ]
    return found


def _write_file_sidecar(path: Path, digest: str) -> None:
    """The sidecar `models prepare` reads (``.NAME.sha256``), from a digest just computed while
    downloading, so that a 6 GB file is not hashed again."""
    with atomic_writer(checksum_sidecar(path)) as out:
        out.write(f"{stamp(path)} {digest}\n")


def _check_present(path: Path, remote: Remote) -> str:
    """sha256 of a file already in place, checked against its pins (it was put there by an
    earlier fetch, which checked it, or by hand)."""
    from virnucpro.models.download import BLOCK, git_blob_sha1

    fresh = _read_sidecar(path)
    digest = fresh or file_sha256(path)
    if remote.sha256 is not None and digest != remote.sha256:
        raise VirnucproError(
            f"{path}: sha256 mismatch: expected {remote.sha256}, got {digest} (a file already "
            f"there; remove it and run 'virnucpro models fetch' again)"
        )
    if remote.git_sha1 is not None:
        blob = git_blob_sha1(path.stat().st_size)
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK):
                blob.update(block)
        if blob.hexdigest() != remote.git_sha1:
            raise VirnucproError(
                f"{path}: git blob sha1 mismatch: expected {remote.git_sha1}, got "
                f"{blob.hexdigest()} (a file already there; remove it and run "
                f"'virnucpro models fetch' again)"
            )
    if fresh is None:
        _write_file_sidecar(path, digest)
    return digest


def fetch_models(cache: Path, *, mirror: str | None = None, attempts: int = 3) -> list[Path]:
    """Download ESM-2 3B, DNABERT-S and the published classifiers into ``cache`` from their
    pinned revisions, each checked against its pinned checksum before it takes its place
    (resumed where an earlier fetch stopped), then convert the classifiers to safetensors.
    Files already there are checked, not downloaded again. ``mirror`` (default
    ``$VIRNUCPRO_MODELS_MIRROR``) replaces the hosts, for tests or a local copy; the checksums
    still apply. Writes ``.fetch.json``: the source, check and sha256 of every file."""
    import json

    from virnucpro.models.download import MIRROR_ENV, download, mirror_url

    cache = Path(cache)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if mirror:
        log.warning("downloading from the mirror %s instead of the pinned hosts", mirror)
    (cache / DNABERT_DIRNAME).mkdir(parents=True, exist_ok=True)
    manifest = cache / FETCH_MANIFEST
    try:
        records: dict[str, dict] = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        records = {}
    wanted = remotes()
    for remote in wanted:
        destination = cache / remote.path
        if remote.classifier and (cache / classifier_name(remote.classifier)).is_file():
            continue  # converted already (or placed by hand): the .pth is not needed
        url = mirror_url(remote.url, mirror)
        record = dict(records.get(remote.path, {}))
        if destination.is_file():
            digest = _check_present(destination, remote)
        else:
            record["downloaded_from"] = url
            digest = download(
                url,
                destination,
                sha256=remote.sha256,
                size=remote.size,
                git_sha1=remote.git_sha1,
                label=remote.path,
                attempts=attempts,
                https_only=not mirror,
            )
            _write_file_sidecar(destination, digest)
        record.update(url=remote.url, check=remote.check, sha256=digest)
        record["size"] = destination.stat().st_size
        if remote.git_sha1:
            record["git_blob_sha1"] = remote.git_sha1
        records[remote.path] = record
    for size in CLASSIFIER_GIT_BLOBS:
        target = cache / classifier_name(size)
        if not target.is_file():
            original = cache / f"{size}_model.pth"
            convert_classifier(original, target)
            records[classifier_name(size)] = {
                "converted_from": original.name,
                "sha256": write_sha256_sidecar(target),
            }
    with atomic_writer(manifest) as out:
        json.dump({"files": records}, out, indent=2, sort_keys=True)
        out.write("\n")
    return [cache / remote.path for remote in wanted if (cache / remote.path).is_file()]
