"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels (models/fp8_kernels.py) run in Triton's CPU interpreter; set before
    # they are defined, which reads it
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A demo models directory (tiny seeded models in the real formats), prepared as
    `models demo` leaves one; a module's own `demo` fixture overrides it."""
    from virnucpro.models.demo import write_demo_models
    from virnucpro.models.files import prepare_models

    directory = tmp_path_factory.mktemp("models") / "demo"
    write_demo_models(directory)
    prepare_models(directory)
    return directory
