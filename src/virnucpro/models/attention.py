"""Which attention kernels the models may use.

Attention never takes cuDNN's kernel: PyTorch picks it first on an H100, and it plans anew
for every batch shape it has not seen (a long pause per new shape, longer still with
DNABERT-S's bias as the mask), while flash and memory-efficient attention start at once and
run nearly as fast. Batches come in many shapes. benchmarks/README.md has the measurements.
"""

from torch.nn.attention import SDPBackend

ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
