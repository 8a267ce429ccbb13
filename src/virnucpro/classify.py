"""Stage classify: join the two feature files by frame ID and score every frame with the MLP.

Writes P.scores.tsv (frame_id, prediction, score1, score2, in prepared order) and
P.scores.json (what produced them: models, checksums, devices, counts, timings).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from virnucpro import __version__
from virnucpro.errors import VirnucproError
from virnucpro.features import CHUNK_SIZE, KIND, PRECISION, read_features, read_metadata
from virnucpro.fileio import atomic_writer
from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.files import sha256
from virnucpro.paths import FEATURES, SCORES_HEADER, scores_files

log = logging.getLogger(__name__)

CLASSIFY_BATCH = 4096
MODEL_LABEL = {"dnabert": "DNABERT-S", "esm2": "ESM-2"}
# (DNABERT-S, ESM-2) precisions that differ yet belong together: --precision fp8 runs ESM-2
# at fp8 and DNABERT-S at bf16 (embed.DnaBertEmbedder.runs_at).
PRECISIONS_TOGETHER = {("bf16", "fp8")}


def check_provenance(
    dna_path: Path, esm_path: Path, chunk_size: int, classifier_path: Path
) -> str | None:
    """Refuse feature files that do not belong together, from what each records (embed's
    metadata): swapped, made by the wrong model, at different precisions (but for the pair
    --precision fp8 makes, PRECISIONS_TOGETHER) or chunk sizes, or at a chunk size other
    than classify's (the classifier's). Returns what could not be checked, as a warning for
    later: what a file does not record (virnucpro 0.1.0 files, or frames prepared without
    prepare's header note); nothing for files without rows."""
    dna, esm = read_metadata(dna_path), read_metadata(esm_path)
    dna_kind, esm_kind = dna.get(KIND), esm.get(KIND)
    if (dna_kind, esm_kind) == ("esm2", "dnabert"):
        raise VirnucproError(
            f"{dna_path} and {esm_path} are swapped: the first holds ESM-2 features, the "
            "second DNABERT-S features; give the DNABERT-S file first"
        )
    for path, kind, expected, position in ((dna_path, dna_kind, "dnabert", "first"),
                                           (esm_path, esm_kind, "esm2", "second")):  # fmt: skip
        if kind is not None and kind != expected:
            raise VirnucproError(
                f"{path}: {MODEL_LABEL.get(kind, repr(kind))} features, but the {position} "
                f"feature file must hold {MODEL_LABEL[expected]} features"
            )
    precisions = (dna.get(PRECISION), esm.get(PRECISION))
    if (
        None not in precisions
        and len(set(precisions)) > 1
        and precisions not in PRECISIONS_TOGETHER
    ):
        raise VirnucproError(
            f"{esm_path}: made at precision {esm[PRECISION]}, {dna_path} at {dna[PRECISION]}"
        )
    sizes = {path: meta.get(CHUNK_SIZE, "") for path, meta in ((dna_path, dna), (esm_path, esm))}
    known = {path: int(size) for path, size in sizes.items() if size.isdigit()}
    if len(set(known.values())) > 1:
        raise VirnucproError(
            f"{esm_path}: made at chunk size {known[esm_path]}, {dna_path} at {known[dna_path]}"
        )
    for path, size in known.items():
        if size != chunk_size:
            raise VirnucproError(
                f"{path}: made at chunk size {size}, but classify has --chunk-size "
                f"{chunk_size} (classifier {classifier_path.name})"
            )
    missing = []
    for path, meta in ((dna_path, dna), (esm_path, esm)):
        what = [name for name, recorded in (("model", KIND in meta), ("chunk size", path in known))
                if not recorded]  # fmt: skip
        if what and meta.get("rows") != "0":
            missing.append(f"{path} ({', '.join(what)})")
    return f"not recorded, so not checked: {'; '.join(missing)}" if missing else None


def join_features(dna_path: Path, esm_path: Path) -> tuple[list[str], torch.Tensor, dict, dict]:
    """DNABERT-S then ESM-2 features per frame, in the DNABERT-S file's row order."""
    dna_ids, dna, dna_meta = read_features(dna_path)
    esm_ids, esm, esm_meta = read_features(esm_path)
    for path, ids in ((dna_path, dna_ids), (esm_path, esm_ids)):
        if len(set(ids)) != len(ids):
            raise VirnucproError(f"{path}: duplicate frame IDs")
    if set(dna_ids) != set(esm_ids):
        only_dna = sorted(set(dna_ids) - set(esm_ids))
        only_esm = sorted(set(esm_ids) - set(dna_ids))
        detail = []
        if only_dna:
            detail.append(f"{len(only_dna)} only in {dna_path.name} (e.g. '{only_dna[0]}')")
        if only_esm:
            detail.append(f"{len(only_esm)} only in {esm_path.name} (e.g. '{only_esm[0]}')")
        raise VirnucproError(f"{esm_path}: frame IDs differ from {dna_path}: {'; '.join(detail)}")
    position = {frame_id: row for row, frame_id in enumerate(esm_ids)}
    esm = esm[torch.tensor([position[i] for i in dna_ids], dtype=torch.long)]
    return dna_ids, torch.cat([dna, esm], dim=1), dna_meta, esm_meta


def score(model: MLPClassifier, features: torch.Tensor) -> torch.Tensor:
    """Softmax scores (N, 2): column 0 = others (score1), column 1 = virus (score2)."""
    with torch.inference_mode():
        parts = [
            torch.softmax(model(features[i : i + CLASSIFY_BATCH]), dim=1)
            for i in range(0, features.shape[0], CLASSIFY_BATCH)
        ]
    return torch.cat(parts) if parts else torch.zeros(0, 2)


def viral_frames(scores: np.ndarray) -> np.ndarray:
    """Each frame's call from its scores (N, 2) as score gives them: virus iff score2 >
    score1, i.e. score2 > 0.5 (the original's argmax: a tie is others)."""
    return scores[:, 1] > scores[:, 0]


def scores_prefix(dna_path: Path) -> str:
    name = Path(dna_path).name
    for suffix in (FEATURES["dnabert"], ".safetensors"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def classify(
    dna_path: Path,
    esm_path: Path,
    model: MLPClassifier,
    classifier_path: Path,
    chunk_size: int,
    outdir: Path,
) -> tuple[Path, Path]:
    """Stage entry: frame scores of one shard."""
    started = time.perf_counter()
    dna_path, esm_path = Path(dna_path), Path(esm_path)
    unchecked = check_provenance(dna_path, esm_path, chunk_size, Path(classifier_path))
    ids, features, dna_meta, esm_meta = join_features(dna_path, esm_path)
    if features.shape[1] != model.input_dim:
        raise VirnucproError(
            f"{classifier_path}: classifier expects {model.input_dim} features, the feature "
            f"files give {features.shape[1]} (DNABERT-S + ESM-2: wrong models for it?)"
        )
    if unchecked:
        log.warning("%s", unchecked)
    probabilities = score(model, features).numpy()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    prefix = scores_prefix(dna_path)
    tsv, meta = scores_files(outdir, prefix)
    viral = viral_frames(probabilities)
    with atomic_writer(tsv) as out:
        out.write(SCORES_HEADER)
        for frame_id, (others, virus), is_viral in zip(ids, probabilities, viral, strict=True):
            label = "virus" if is_viral else "others"
            # str() of a float32 is what the original wrote (shortest repr; f-string format is not)
            out.write(f"{frame_id}\t{label}\t{str(np.float32(others))}\t{str(np.float32(virus))}\n")
    record = {
        "virnucpro_version": __version__,
        "shard": prefix,
        "chunk_size": chunk_size,
        "frames_scored": len(ids),
        "classifier": {"path": str(classifier_path), "sha256": sha256(classifier_path)},
        "stages": {
            "embed-dna": json.loads(dna_meta.get("info", "{}")),
            "embed-protein": json.loads(esm_meta.get("info", "{}")),
            "classify": {"seconds": round(time.perf_counter() - started, 3)},
        },
    }
    with atomic_writer(meta) as out:
        json.dump(record, out, indent=2)
        out.write("\n")
    return tsv, meta
