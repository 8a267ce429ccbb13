"""--compile: the parts of each model that gain from torch.compile, swapped in on an instance.

ESM-2: only SelfAttention.project (q/k/v projection and rotary rotation) is compiled; its
norms, GELU and adds run faster as ATen's own kernels than as the ones compiled with dynamic
shapes. ESM-2 in FP8 (models/fp8.py): nothing; its layers run Triton kernels of their own.
DNABERT-S: the whole DnaBert.encode (every layer with its attention), since its layers are
small enough that launching them one at a time left the GPU waiting for the host.

Each method is compiled once, with dynamic shapes, and that one compiled function is shared
by every layer of every model instance, so no layer or model compiles again. Single-row
batches run the eager method: a dimension of size 1 is always specialized, so one row would
force another compile mid-run (they are rare: one very long sequence).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn

from virnucpro.models.dnabert import DnaBert
from virnucpro.models.esm2 import ESM2, SelfAttention
from virnucpro.models.fp8 import Fp8Layer

_COMPILED: dict[Callable, Callable] = {}


def _shared(method: Callable) -> Callable:
    """The torch.compile'd version of ``method`` (a plain function, the module its first
    argument), made once per process."""
    if method not in _COMPILED:
        _COMPILED[method] = torch.compile(method, dynamic=True)
    return _COMPILED[method]


def _swap_in(module: nn.Module, name: str, method: Callable) -> None:
    """Replace ``module.name`` with the shared compiled ``method``, eager for one row."""
    compiled = _shared(method)

    def run(self: nn.Module, first: torch.Tensor, *args: object) -> object:
        return (compiled if first.shape[0] > 1 else method)(self, first, *args)

    setattr(module, name, types.MethodType(run, module))


def compile_model(model: ESM2 | DnaBert) -> ESM2 | DnaBert:
    """Route ``model``'s compiled parts through torch.compile (in place); returns it."""
    if isinstance(model, ESM2):
        for layer in model.layers:
            if not isinstance(layer, Fp8Layer):  # FP8 layers run Triton kernels of their own
                _swap_in(layer.self_attn, "project", SelfAttention.project)
    elif isinstance(model, DnaBert):
        _swap_in(model, "encode", DnaBert.encode)
    else:
        raise TypeError(f"cannot compile a {type(model).__name__}")
    return model
