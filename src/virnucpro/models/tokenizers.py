"""The two models' tokenizers: ESM-2's protein alphabet and DNABERT-S's tokenizer.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from virnucpro.errors import VirnucproError

# fair-esm's ESM-1b/ESM-2 alphabet (Alphabet.from_architecture("ESM-1b")), in index order.
PROTEIN_TOKENS: list[str] = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W",
    "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
]  # fmt: skip
_TOKEN_INDEX = {tok: i for i, tok in enumerate(PROTEIN_TOKENS)}
CLS_IDX = _TOKEN_INDEX["<cls>"]
PAD_IDX = _TOKEN_INDEX["<pad>"]
EOS_IDX = _TOKEN_INDEX["<eos>"]
UNK_IDX = _TOKEN_INDEX["<unk>"]
MASK_IDX = _TOKEN_INDEX["<mask>"]

_BYTE_TO_TOKEN = np.full(256, UNK_IDX, dtype=np.int64)
for _token, _index in _TOKEN_INDEX.items():
    if len(_token) == 1:
        _BYTE_TO_TOKEN[ord(_token)] = _index


def tokenize_protein(seq: str) -> list[int]:
    """Token ids <cls> + one token per residue + <eos>; letters outside the alphabet are <unk>."""
    residues = _BYTE_TO_TOKEN[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
    return [CLS_IDX, *residues.tolist(), EOS_IDX]


class DnaTokenizer:
    """DNABERT-S's Hugging Face tokenizer.json, run with the `tokenizers` package."""

    def __init__(self, tokenizer: Tokenizer, path: Path) -> None:
        # HF's tokenizer call only truncates or pads when asked; VirNucPro asked for neither.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        pad_id = tokenizer.token_to_id("[PAD]")
        cls_id = tokenizer.token_to_id("[CLS]")
        sep_id = tokenizer.token_to_id("[SEP]")
        if pad_id is None or cls_id is None or sep_id is None:
            raise VirnucproError(f"{path}: vocabulary lacks [PAD], [CLS] or [SEP]")
        probe = self.encode("A")
        if probe[0] != cls_id or probe[-1] != sep_id:
            raise VirnucproError(f"{path}: post-processor does not add [CLS] ... [SEP]")
        self.pad_id: int = pad_id

    @classmethod
    def from_file(cls, path: Path) -> DnaTokenizer:
        """Read a tokenizer.json; any problem is a one-line VirnucproError naming the file."""
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for missing or bad files
            problem = "file not found" if not path.is_file() else f"not a tokenizer file ({e})"
            raise VirnucproError(f"{path}: {problem}") from None
        return cls(tokenizer, path)

    def encode(self, seq: str) -> list[int]:
        """Token ids of one sequence with [CLS] ... [SEP], no truncation.

        Characters are handled as tokenizer.json says: DNABERT-2's BPE vocabulary is upper-case
        A/C/G/T pieces, so other letters (lower case, N) become [UNK] unless the file normalizes.
        """
        return self._tokenizer.encode(seq).ids

    def encode_batch(self, seqs: list[str]) -> list[list[int]]:
        """encode() of many sequences, tokenized in parallel by the tokenizers library (the
        variant that skips character offsets, which nothing here uses, and is faster)."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch_fast(seqs)]
