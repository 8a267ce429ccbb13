"""Native ESM-2 against fair-esm itself: tokens, last-layer mean features, strict safe loading."""

import argparse
import os
import pickle
import re
from pathlib import Path

import esm
import pytest
import torch

from virnucpro.embed import Esm2Embedder
from virnucpro.errors import VirnucproError
from virnucpro.models import load as load_module
from virnucpro.models.demo import write_demo_esm2
from virnucpro.models.esm2 import ESM2
from virnucpro.models.load import cache_path, fresh_cache, load_esm2, write_cache
from virnucpro.models.tokenizers import PROTEIN_TOKENS, tokenize_protein

# Mixed lengths (1, 7, 50, 166 aa) so that padding is exercised; X is a real token, J is not.
PROTEINS = [
    "M",
    "MKTAYIA",
    "ACDEFGHIKLMNPQRSTVWY" * 2 + "XJBUZO" + "LAGVS",
    "MKV" * 55 + "A",
]


def esm2_mean_embeddings(model: ESM2, token_batch: list[list[int]]) -> torch.Tensor:
    """The embed-protein features of one batch, on the CPU."""
    return Esm2Embedder(model).run(token_batch).cpu()


def fair_esm_model(path: Path) -> tuple[torch.nn.Module, esm.data.Alphabet]:
    """fair-esm's own model in float64, the reference. Float32 CPU runs on this AMX machine are
    occasionally (~1 fresh process in 40) off by ~4e-4 against float64, fair-esm's and ours
    alike; a float64 reference keeps the fair-esm side of every comparison stable."""
    # The hub files hold argparse.Namespace; torch's weights_only default needs it allowlisted.
    with torch.serialization.safe_globals([argparse.Namespace]):
        model, alphabet = esm.pretrained.load_model_and_alphabet_local(path)
    return model.double().eval(), alphabet


def fair_esm_tokens(alphabet: esm.data.Alphabet, proteins: list[str]) -> torch.Tensor:
    # fair-esm raises KeyError on letters outside its alphabet; spell them <unk> for it.
    known = set(PROTEIN_TOKENS)
    spelled = ["".join(c if c in known else "<unk>" for c in p) for p in proteins]
    _, _, tokens = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(spelled)])
    return tokens


def fair_esm_means(path: Path, proteins: list[str]) -> torch.Tensor:
    """The original VirNucPro rule on fair-esm's own forward: mean over residues 1..min(L, 1024)."""
    model, alphabet = fair_esm_model(path)
    tokens = fair_esm_tokens(alphabet, proteins)
    with torch.no_grad():
        rep = model(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers]
    means = [rep[i, 1 : 1 + min(len(p), 1024)].mean(0) for i, p in enumerate(proteins)]
    return torch.stack(means).float()


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    path = tmp_path / "esm2_t2_demo.pt"
    write_demo_esm2(path, seed=7)
    return path


def test_alphabet_matches_fair_esm() -> None:
    assert PROTEIN_TOKENS == esm.data.Alphabet.from_architecture("ESM-1b").all_toks


def test_tokens_match_fair_esm_batch_converter() -> None:
    tokens = fair_esm_tokens(esm.data.Alphabet.from_architecture("ESM-1b"), PROTEINS)
    for row, protein in zip(tokens, PROTEINS, strict=True):
        ids = tokenize_protein(protein)
        assert ids == row[: len(ids)].tolist()
        assert set(row[len(ids) :].tolist()) <= {1}
    assert tokenize_protein("AJ")[2] == PROTEIN_TOKENS.index("<unk>")


def test_mean_embeddings_match_fair_esm(demo: Path) -> None:
    expected = fair_esm_means(demo, PROTEINS)
    got = esm2_mean_embeddings(load_esm2(demo), [tokenize_protein(p) for p in PROTEINS])
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert got.shape == (len(PROTEINS), 64)
    assert expected.std(0).mean() > 0.1  # random weights that actually mix the input
    assert (got - expected).abs().max().item() <= 1e-5


def test_float64_math_matches_fair_esm(demo: Path) -> None:
    # In float64 the only difference left is fair-esm's float32 softmax.
    model = load_esm2(demo, dtype=torch.float64)
    got = esm2_mean_embeddings(model, [tokenize_protein(p) for p in PROTEINS])
    assert (got - fair_esm_means(demo, PROTEINS)).abs().max().item() <= 1e-6


def test_forward_matches_fair_esm_at_every_position(demo: Path) -> None:
    # Padded positions included: both implementations keep computing them the same way.
    model, alphabet = fair_esm_model(demo)
    tokens = fair_esm_tokens(alphabet, PROTEINS)
    with torch.no_grad():
        expected = model(tokens, repr_layers=[2])["representations"][2]
    with torch.inference_mode():
        got = load_esm2(demo, dtype=torch.float64)(tokens)
    assert (got - expected).abs().max().item() <= 1e-6


def test_mean_window_is_first_1024_residues(tmp_path: Path) -> None:
    path = tmp_path / "esm2_t1_demo.pt"
    write_demo_esm2(path, seed=1, num_layers=1, embed_dim=16, attention_heads=2)
    proteins = ["MKTAYIAKQRQISFVKSHFSRQ" * 50, "MKV"]  # 1100 residues: the model sees all
    expected = fair_esm_means(path, proteins)
    model = load_esm2(path, dtype=torch.float64)
    got = esm2_mean_embeddings(model, [tokenize_protein(p) for p in proteins])
    assert (got - expected).abs().max().item() <= 1e-6


def test_load_casts_to_requested_dtype(demo: Path) -> None:
    model = load_esm2(demo, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    got = esm2_mean_embeddings(model, [tokenize_protein("MKTAYIA")])
    assert got.dtype == torch.float32


def test_garbage_file_is_a_one_line_error(tmp_path: Path, demo: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(demo.read_bytes()[:1000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all\n" * 10)
    for path in (truncated, garbage, tmp_path / "absent.pt"):
        with pytest.raises(VirnucproError) as err:
            load_esm2(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_not_a_checkpoint_dict(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"embed_tokens.weight": torch.zeros(33, 8)}, path)
    with pytest.raises(
        VirnucproError, match=f"^{re.escape(str(path))}: not a fair-esm ESM-2 checkpoint"
    ):
        load_esm2(path)


def test_missing_key_is_named(tmp_path: Path, demo: Path) -> None:
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(demo, weights_only=True)
    del data["model"]["encoder.sentence_encoder.layers.1.fc2.bias"]
    path = tmp_path / "esm2_missing.pt"
    torch.save(data, path)
    with pytest.raises(
        VirnucproError, match=rf"^{re.escape(str(path))}: missing key\(s\) layers\.1\.fc2\.bias$"
    ):
        load_esm2(path)


def test_unexpected_key_is_named(tmp_path: Path, demo: Path) -> None:
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(demo, weights_only=True)
    data["model"]["encoder.sentence_encoder.emb_layer_norm_before.weight"] = torch.ones(64)
    path = tmp_path / "esm2_extra.pt"
    torch.save(data, path)
    with pytest.raises(VirnucproError, match="unexpected key.*emb_layer_norm_before.weight"):
        load_esm2(path)


INSTANTIATED: list[str] = []


def _record(name: str) -> str:
    INSTANTIATED.append(name)
    return name


class Payload:
    """Unpickling this would call _record: the loader must refuse before that happens."""

    def __reduce__(self) -> tuple:
        return (_record, ("payload",))


def test_pickled_arbitrary_object_is_refused(tmp_path: Path, demo: Path) -> None:
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(demo, weights_only=True)
    data["extra_state"] = Payload()
    path = tmp_path / "esm2_payload.pt"
    torch.save(data, path)
    assert pickle.loads(pickle.dumps(Payload())) == "payload" and INSTANTIATED == ["payload"]
    INSTANTIATED.clear()
    with pytest.raises(VirnucproError, match=f"^{re.escape(str(path))}: holds pickled objects"):
        load_esm2(path)
    assert INSTANTIATED == []


def _listing(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in directory.iterdir()}


def _no_checkpoint_reads(monkeypatch) -> None:
    """Loading must now come from the ready-to-load copy."""

    def refuse(path):
        raise AssertionError(f"{path}: checkpoint read although a fresh copy is there")

    monkeypatch.setattr(load_module, "_read_checkpoint", refuse)


def test_load_never_writes_a_cache(tmp_path):
    path = tmp_path / "esm2_t2_tiny.pt"
    write_demo_esm2(path, seed=3)
    before = _listing(tmp_path)
    for dtype in (torch.float32, torch.bfloat16):
        load_esm2(path, dtype=dtype, use_cache=True)
    assert _listing(tmp_path) == before


def test_cache_is_written_once_used_and_invalidated(tmp_path, monkeypatch):
    """The safetensors copy gives the same model; a changed checkpoint is not served stale."""
    path = tmp_path / "esm2_t2_tiny.pt"
    write_demo_esm2(path, seed=3)
    tokens = [tokenize_protein("MKTAYIAKQR"), tokenize_protein("GAV")]
    first = esm2_mean_embeddings(load_esm2(path), tokens)
    cache = write_cache(path, torch.float32)
    assert cache == cache_path(path, torch.float32) and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    assert write_cache(path, torch.float32) == cache and cache.stat().st_mtime_ns == stamp
    with monkeypatch.context() as m:
        _no_checkpoint_reads(m)
        again = esm2_mean_embeddings(load_esm2(path), tokens)
    assert torch.equal(first, again)

    old_mtime = path.stat().st_mtime_ns
    write_demo_esm2(path, seed=4)  # new weights, same size: only the mtime tells
    os.utime(path, ns=(old_mtime + 10**9, old_mtime + 10**9))
    fresh = esm2_mean_embeddings(load_esm2(path, use_cache=False), tokens)
    cached = esm2_mean_embeddings(load_esm2(path), tokens)
    assert torch.equal(fresh, cached)
    assert not torch.equal(fresh, first)


def test_cache_beside_a_symlink_leaves_the_target_directory_alone(tmp_path, monkeypatch):
    store, linked = tmp_path / "store", tmp_path / "linked"
    store.mkdir()
    linked.mkdir()
    write_demo_esm2(store / "esm2_t2_tiny.pt", seed=3)
    link = linked / "esm2_t2_tiny.pt"
    link.symlink_to(store / "esm2_t2_tiny.pt")
    before = _listing(store)
    write_cache(link, torch.bfloat16)
    assert _listing(store) == before
    assert cache_path(link, torch.bfloat16).parent == linked
    # the copy records the target's stamp: fresh through the link, so loads use it
    assert fresh_cache(link, torch.bfloat16) == cache_path(link, torch.bfloat16)
    _no_checkpoint_reads(monkeypatch)
    model = load_esm2(link, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
