"""Which attention kernels the models may use: flash, memory-efficient and math attention,
never cuDNN's.

cuDNN's kernel is left out because PyTorch picks it first on an H100, and it plans anew for
every batch shape it has not seen (a long pause per new shape, longer still with DNABERT-S's
bias as the mask), while flash and memory-efficient attention start at once and run nearly as
fast. Batches come in many shapes. benchmarks/README.md has the measurements.

It is switched off once, for the whole process, when a model is built: PyTorch's
attention-backend switches are process-wide, not per thread, so a `with sdpa_kernel(...)`
around each forward pass restored them under another thread's forward. In predict's two lanes
on one GPU the other lane's layers could then run cuDNN's kernel, and ESM-2's features changed
in their last digits from run to run (benchmarks/README.md, runs 37f–37g).
"""

import torch


def exclude_cudnn_attention() -> None:
    """Switch cuDNN's attention kernel off for this process; the other kernels stay on."""
    torch.backends.cuda.enable_cudnn_sdp(False)
