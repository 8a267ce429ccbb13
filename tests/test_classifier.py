"""The classifier files: the original pickled whole-module format (300_model.pth /
500_model.pth, class ``__main__.MLPClassifier``), its conversion to safetensors, and the
promise that reading such a file never runs code from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from virnucpro.errors import VirnucproError
from virnucpro.models.classifier import (
    MLPClassifier,
    convert_classifier,
    load_classifier,
    read_original_classifier,
    write_classifier,
)

VIRNUCPRO = Path(sys.executable).parent / "virnucpro"

# The original train.py's class, defined in __main__ as the original script did, saved whole
# with torch.save(model, path) as 300_model.pth / 500_model.pth were.
ORIGINAL = r"""
import sys

import numpy as np
import torch
import torch.nn as nn


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = torch.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


out = sys.argv[1]
torch.manual_seed(1997)
model = MLPClassifier(3328, 512, 2)
with torch.no_grad():  # batch-norm state as a trained model has it
    model.bn1.running_mean.normal_(0, 0.5)
    model.bn1.running_var.uniform_(0.25, 2.0)
    model.bn1.weight.uniform_(0.5, 1.5)
    model.bn1.bias.normal_(0, 0.2)
    model.bn1.num_batches_tracked.fill_(12345)
model.train()
torch.save(model, f"{out}/train_mode.pth")  # saved straight after training
model.eval()
torch.save(model, f"{out}/500_model.pth")
torch.save(model.state_dict(), f"{out}/state_dict.pt")  # plain tensors, for comparison
x = torch.randn(32, 3328, generator=torch.Generator().manual_seed(42))
with torch.no_grad():
    y = model(x)
np.save(f"{out}/x.npy", x.numpy())
np.save(f"{out}/y.npy", y.numpy())
"""


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("original")
    subprocess.run(
        [sys.executable, "-c", ORIGINAL, str(directory)], check=True, capture_output=True
    )
    return directory


def reference(original: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and what the original module computed on it."""
    return tuple(torch.from_numpy(np.load(original / f"{name}.npy")) for name in ("x", "y"))


def outputs(model: MLPClassifier, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_convert_classifier_command_reproduces_the_original(original, tmp_path):
    converted = tmp_path / "classifier_500.safetensors"
    result = subprocess.run(
        [str(VIRNUCPRO), "models", "convert-classifier", str(original / "500_model.pth"),
         str(converted)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = load_classifier(converted)
    assert model.input_dim == 3328 and not model.training
    x, y = reference(original)
    torch.testing.assert_close(outputs(model, x), y, atol=1e-6, rtol=0)


def test_original_saved_in_training_mode_is_used_in_eval_mode(original, tmp_path):
    converted = tmp_path / "from_train_mode.safetensors"
    convert_classifier(original / "train_mode.pth", converted)
    x, y = reference(original)
    model = load_classifier(converted)
    torch.testing.assert_close(outputs(model, x), y, atol=1e-6, rtol=0)
    assert int(model.bn1.num_batches_tracked) == 12345  # every buffer carried over


def test_read_original_keeps_every_tensor(original):
    model = read_original_classifier(original / "500_model.pth")
    pickled = torch.load(original / "state_dict.pt", weights_only=True)
    assert model.state_dict().keys() == pickled.keys()
    for key, value in pickled.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_classifier_refuses_a_pth(original):
    with pytest.raises(VirnucproError, match="convert it first"):
        load_classifier(original / "500_model.pth")


def test_write_and_load_classifier_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MLPClassifier(40, hidden_dim=16).eval()
    with torch.no_grad():
        model.bn1.running_var.uniform_(0.5, 2.0)
    write_classifier(model, tmp_path / "c.safetensors")
    loaded = load_classifier(tmp_path / "c.safetensors")
    x = torch.randn(5, 40)
    assert torch.equal(outputs(loaded, x), outputs(model, x))


# --------------------------------------------------------------------------------------
# A pickle must not be able to run code
# --------------------------------------------------------------------------------------


class RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class RunsEval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


class RunsShellModule(nn.Module):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def __reduce_ex__(self, protocol):
        return os.system, (self.command,)


@pytest.mark.parametrize(
    "payload",
    [
        lambda flag: RunsShell(f"echo pwned > {flag}"),
        lambda flag: {"hidden_layer.weight": RunsShell(f"echo pwned > {flag}")},
        lambda flag: RunsEval(f"open({str(flag)!r}, 'w').write('pwned')"),
        lambda flag: nn.Sequential(nn.Linear(2, 2), RunsShellModule(f"echo pwned > {flag}")),
    ],
    ids=["os.system", "inside-a-dict", "eval", "inside-a-module"],
)
def test_malicious_pickle_is_refused_without_running(payload, tmp_path):
    flag = tmp_path / "pwned"
    path = tmp_path / "500_model.pth"
    torch.save(payload(flag), path)
    with pytest.raises(VirnucproError, match=str(path)):
        read_original_classifier(path)
    assert not flag.exists()
    with pytest.raises(VirnucproError):
        convert_classifier(path, tmp_path / "out.safetensors")
    assert not flag.exists()
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    "contents",
    [b"", b"not a pickle at all", b"PK\x03\x04 truncated zip"],
    ids=["empty", "text", "truncated-zip"],
)
def test_unreadable_original_is_a_user_error(contents, tmp_path):
    path = tmp_path / "300_model.pth"
    path.write_bytes(contents)
    with pytest.raises(VirnucproError, match=str(path)):
        read_original_classifier(path)


def test_original_that_is_not_a_classifier(tmp_path):
    path = tmp_path / "300_model.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(VirnucproError, match="not a VirNucPro classifier"):
        read_original_classifier(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(VirnucproError, match="not a classifier"):
        read_original_classifier(path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_model_files_honour_the_umask(tmp_path, umask):
    """safetensors alone writes 0600: a shared models directory would lock others out."""
    from virnucpro.models.demo import write_demo_dnabert

    old = os.umask(umask)
    try:
        write_classifier(MLPClassifier(8), tmp_path / "classifier.safetensors")
        write_demo_dnabert(tmp_path / "dnabert", seed=0)
    finally:
        os.umask(old)
    for path in (tmp_path / "classifier.safetensors", tmp_path / "dnabert" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
