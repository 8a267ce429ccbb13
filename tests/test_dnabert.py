"""DNABERT-S native model: math against a plain reference, padding, strict loading, tokenizer."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from virnucpro.embed import DnaBertEmbedder
from virnucpro.errors import VirnucproError
from virnucpro.models.demo import write_demo_dnabert
from virnucpro.models.dnabert import DnaBert, alibi_slopes
from virnucpro.models.load import load_dnabert
from virnucpro.models.tokenizers import DnaTokenizer


def dnabert_mean_embeddings(
    model: DnaBert, token_batch: list[list[int]], tokenizer: DnaTokenizer
) -> torch.Tensor:
    """The embed-dna features of one batch, on the CPU."""
    return DnaBertEmbedder(model, tokenizer).run(token_batch).cpu()


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    write_demo_dnabert(tmp_path / "dnabert", seed=7)
    return tmp_path / "dnabert"


def set_heads(model_dir: Path, n_heads: int) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["num_attention_heads"] = n_heads
    path.write_text(json.dumps(config))


def reference_slopes(n: int) -> list[float]:
    """Closed form of the ALiBi slopes: 2^(-8k/n) for powers of two; otherwise those of the
    power of two p below n, then the odd-numbered slopes 2^(-4(2j+1)/p) of 2p heads."""
    p = 2 ** math.floor(math.log2(n))
    slopes = [2.0 ** (-8 * (i + 1) / p) for i in range(p)]
    return slopes + [2.0 ** (-4 * (2 * j + 1) / p) for j in range(n - p)]


def reference_forward(state: dict, config: dict, ids: list[int]) -> torch.Tensor:
    """The same network written plainly, one unpadded sequence, loops over heads."""
    h, n_heads = config["hidden_size"], config["num_attention_heads"]
    d, inter, eps = h // n_heads, config["intermediate_size"], config["layer_norm_eps"]
    t = len(ids)

    def ln(x, name):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * state[name + ".weight"] + state[name + ".bias"]

    def linear(x, name, bias=True):
        y = x @ state[name + ".weight"].T
        return y + state[name + ".bias"] if bias else y

    x = state["embeddings.word_embeddings.weight"][ids]
    x = x + state["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    slopes = reference_slopes(n_heads)
    pos = torch.arange(t, dtype=torch.float32)
    distance = (pos[None, :] - pos[:, None]).abs()
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv = linear(x, p + "attention.self.Wqkv")
        q, k, v = qkv[:, :h], qkv[:, h : 2 * h], qkv[:, 2 * h :]
        heads = []
        for j in range(n_heads):
            qj, kj, vj = (m[:, j * d : (j + 1) * d] for m in (q, k, v))
            scores = qj @ kj.T / math.sqrt(d) - slopes[j] * distance
            heads.append(torch.softmax(scores, dim=-1) @ vj)
        attn = linear(torch.cat(heads, dim=-1), p + "attention.output.dense")
        x = ln(attn + x, p + "attention.output.LayerNorm")
        gl = linear(x, p + "mlp.gated_layers", bias=False)
        gate, value = gl[:, :inter], gl[:, inter:]
        act = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))
        x = ln(linear(act * value, p + "mlp.wo") + x, p + "mlp.layernorm")
    return x


def sample_batch(tokenizer) -> list[list[int]]:
    seqs = ["ACGT", "AATTACGCGTAATTATAGCGC" * 3, "GCAT" * 20, "T"]
    return [tokenizer.encode(s) for s in seqs]


def test_slopes_match_closed_form() -> None:
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    for n in (1, 2, 4, 6, 12, 16, 24):
        assert alibi_slopes(n) == pytest.approx(reference_slopes(n), rel=1e-12)


@pytest.mark.parametrize("n_heads", [4, 6, 12])
def test_matches_reference_and_padding_is_invisible(demo: Path, n_heads: int) -> None:
    set_heads(demo, n_heads)  # hidden 48: 6 and 12 heads exercise the non-power-of-two slopes
    model, tokenizer = load_dnabert(demo)
    state = load_file(demo / "model.safetensors")
    config = json.loads((demo / "config.json").read_text())
    batch = sample_batch(tokenizer)

    width = max(map(len, batch))
    ids = torch.full((len(batch), width), tokenizer.pad_id)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.inference_mode():
        padded = model(ids, mask)
        worst = 0.0
        for row, seq in enumerate(batch):
            ref = reference_forward(state, config, seq)
            single = model(torch.tensor([seq]), torch.ones(1, len(seq)))[0]
            worst = max(worst, (single - ref).abs().max().item())
            assert torch.allclose(padded[row, : len(seq)], single, atol=1e-6, rtol=0)
            assert not padded[row, len(seq) :].any()
    assert worst <= 1e-5

    means = dnabert_mean_embeddings(model, batch, tokenizer)
    assert means.dtype == torch.float32 and means.shape == (len(batch), config["hidden_size"])
    for row, seq in enumerate(batch):
        expected = reference_forward(state, config, seq).mean(dim=0)  # [CLS], [SEP] included
        assert torch.allclose(means[row], expected, atol=1e-5, rtol=0)


def test_pytorch_model_bin_loads_like_safetensors(demo: Path) -> None:
    model, tokenizer = load_dnabert(demo)
    state = load_file(demo / "model.safetensors")
    (demo / "model.safetensors").unlink()
    torch.save(state, demo / "pytorch_model.bin")
    model_bin, _ = load_dnabert(demo)
    batch = sample_batch(tokenizer)
    assert torch.equal(
        dnabert_mean_embeddings(model, batch, tokenizer),
        dnabert_mean_embeddings(model_bin, batch, tokenizer),
    )


def test_pooler_is_ignored_but_other_keys_are_strict(demo: Path) -> None:
    path = demo / "model.safetensors"
    state = load_file(path)
    assert "pooler.dense.weight" in state  # the published layout carries the pooler

    broken = dict(state)
    del broken["encoder.layer.1.mlp.wo.bias"]
    save_file(broken, str(path))
    with pytest.raises(VirnucproError, match=r"safetensors: missing weights .*mlp\.wo\.bias"):
        load_dnabert(demo)

    save_file({**state, "encoder.layer.0.extra": torch.zeros(1)}, str(path))
    with pytest.raises(VirnucproError, match=r"model\.safetensors: unexpected weights"):
        load_dnabert(demo)

    save_file({**state, "embeddings.LayerNorm.bias": torch.zeros(3)}, str(path))
    with pytest.raises(VirnucproError, match=r"model\.safetensors: embeddings\.LayerNorm\.bias"):
        load_dnabert(demo)


class Payload:
    """Would flag itself if unpickling ever ran its code."""

    instantiated = False

    def __reduce__(self):
        return (Payload._mark, ())

    @staticmethod
    def _mark() -> "Payload":
        Payload.instantiated = True
        return Payload()


def test_pickled_object_is_rejected(demo: Path) -> None:
    (demo / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": Payload()}, demo / "pytorch_model.bin")
    with pytest.raises(VirnucproError, match=r"pytorch_model\.bin: not a plain tensor state dict"):
        load_dnabert(demo)
    assert not Payload.instantiated


def test_missing_and_bad_files(demo: Path, tmp_path: Path) -> None:
    with pytest.raises(VirnucproError, match=r"config\.json: file not found"):
        load_dnabert(tmp_path / "nowhere")

    (demo / "tokenizer.json").unlink()
    with pytest.raises(VirnucproError, match=r"tokenizer\.json: file not found"):
        load_dnabert(demo)

    (demo / "model.safetensors").unlink()
    with pytest.raises(VirnucproError, match="no model.safetensors or pytorch_model.bin"):
        load_dnabert(demo)

    config = demo / "config.json"
    config.write_text("{")
    with pytest.raises(VirnucproError, match=r"config\.json: not valid JSON"):
        load_dnabert(demo)
    config.write_text(json.dumps({"hidden_size": 48}))
    with pytest.raises(VirnucproError, match=r"config\.json: 'vocab_size' must be"):
        load_dnabert(demo)


def test_tokenizer(demo: Path) -> None:
    _, tokenizer = load_dnabert(demo)
    assert tokenizer.pad_id == 3
    ids = tokenizer.encode("ACGTAATTA")
    assert ids[0] == 1 and ids[-1] == 2  # [CLS] ... [SEP]
    assert len(ids) < len("ACGTAATTA") + 2  # BPE merges pieces
    # No normalizer in the file: lower case and N are not in the vocabulary, each is [UNK] (0).
    assert tokenizer.encode("acgN") == [1, 0, 0, 0, 0, 2]
    assert tokenizer.encode("ACNT")[1:-1].count(0) == 1


def test_tokenizer_never_truncates(demo: Path) -> None:
    path = demo / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=8)  # as if the file carried a truncation setting
    tok.save(str(path))
    _, tokenizer = load_dnabert(demo)
    assert len(tokenizer.encode("ACGT" * 50)) > 8


def test_embed_dna_tokenizing_in_chunks_matches_one_sequence_at_a_time(
    demo: Path, tmp_path: Path, monkeypatch
) -> None:
    """embed-dna reads and tokenizes chunks of frames on a second thread while the model runs
    the chunks before; rows must still come back in file order with each frame's own features."""
    import random

    from virnucpro import embed
    from virnucpro.features import read_features

    rng = random.Random(3)
    sequences = ["".join(rng.choice("ACGT") for _ in range(rng.randint(1, 90))) for _ in range(23)]
    fasta = tmp_path / "x.nucleotide.fa"
    fasta.write_text("".join(f">f{i} note\n{s}\n" for i, s in enumerate(sequences)))
    monkeypatch.setattr(embed, "FIRST_CHUNK_FRAMES", 2)
    monkeypatch.setattr(embed, "LARGEST_CHUNK_FRAMES", 8)  # 2 + 4 + 8 + 8 + 1: the last short
    loaded = embed.load_embedder("dnabert", demo, "cpu", "fp32")
    out = embed.embed_file(loaded, fasta, tmp_path / "out", 64, "float32", show_progress=False)
    ids, features, metadata = read_features(out)
    assert ids == [f"f{i}" for i in range(len(sequences))]
    tokenizer = loaded.tokenizer
    with torch.inference_mode():
        for row, seq in enumerate(sequences):
            single = dnabert_mean_embeddings(loaded.model, [tokenizer.encode(seq)], tokenizer)[0]
            assert torch.allclose(features[row], single, atol=1e-5, rtol=0)
    info = json.loads(metadata["info"])
    assert info["tokens"] == sum(len(tokenizer.encode(s)) for s in sequences)
    assert info["frames"] == len(sequences)
