"""The VirNucPro MLP classifier: Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear.

Parameter names match the original ``MLPClassifier`` so its state dict loads unchanged.
The published 300_model.pth / 500_model.pth are whole pickled modules; they are read with
``torch.load(weights_only=True)`` and an allowlist, then kept as a safetensors state dict.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from virnucpro.errors import VirnucproError
from virnucpro.fileio import save_safetensors

HIDDEN_DIM = 512


class MLPClassifier(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int = HIDDEN_DIM, num_class: int = 2):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))

    @property
    def input_dim(self) -> int:
        return self.hidden_layer.in_features


def classifier_from_state_dict(state: dict[str, torch.Tensor], source: Path) -> MLPClassifier:
    try:
        hidden, input_dim = state["hidden_layer.weight"].shape
        num_class = state["output_layer.weight"].shape[0]
    except (KeyError, ValueError):
        raise VirnucproError(f"{source}: not a VirNucPro classifier state dict") from None
    model = MLPClassifier(input_dim, hidden, num_class)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise VirnucproError(f"{source}: classifier weights do not fit ({first})") from None
    return model.eval()


def load_classifier(path: Path) -> MLPClassifier:
    """Load a classifier written by ``write_classifier`` / ``convert_classifier``."""
    path = Path(path)
    if not path.is_file():
        raise VirnucproError(f"{path}: no such file")
    if path.suffix == ".pth":
        raise VirnucproError(
            f"{path}: a pickled original model; convert it first with "
            "'virnucpro models convert-classifier'"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VirnucproError(f"{path}: not a safetensors classifier ({e})") from None
    return classifier_from_state_dict(state, path)


def write_classifier(model: MLPClassifier, path: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, path, metadata={"format": "virnucpro-mlp"})


class _PickledMLP(nn.Module):
    """Stands in for the original ``__main__.MLPClassifier`` while unpickling.

    weights_only unpickling only creates allowlisted classes and only sets their
    attributes; this one has no behaviour, we take its state dict and drop it.
    """


_ALLOWED_IN_ORIGINAL = [
    (_PickledMLP, "__main__.MLPClassifier"),
    nn.Linear,
    nn.BatchNorm1d,
    nn.Dropout,
    set,
]


def read_original_classifier(path: Path) -> MLPClassifier:
    """Read an original whole-module .pth without executing anything from the file."""
    path = Path(path)
    if not path.is_file():
        raise VirnucproError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_ALLOWED_IN_ORIGINAL):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError) as e:
        reason = str(e).strip().splitlines()
        detail = next((line for line in reason if "Unsupported global" in line), "")
        raise VirnucproError(
            f"{path}: not an original VirNucPro classifier "
            f"({detail.strip() or (reason[0] if reason else type(e).__name__)})"
        ) from None
    if isinstance(obj, nn.Module):
        state = obj.state_dict()
    elif isinstance(obj, dict):
        state = obj
    else:
        raise VirnucproError(f"{path}: holds a {type(obj).__name__}, not a classifier")
    return classifier_from_state_dict(state, path)


def convert_classifier(source: Path, destination: Path) -> MLPClassifier:
    """Original pickled .pth -> safetensors state dict."""
    model = read_original_classifier(source)
    write_classifier(model, Path(destination))
    return model
