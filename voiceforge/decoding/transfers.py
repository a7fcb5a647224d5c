"""Host <-> GPU copies that do not wait for the GPU: what lets the decoder queue a step ahead.

A plain copy between a Python list (or a CPU tensor) and a CUDA tensor synchronises the stream:
the host waits for every kernel queued before it, then the GPU waits for the host to queue more.
Through page-locked (pinned) memory the copy itself is queued like a kernel; PyTorch's caching host
allocator keeps such a buffer from being reused until its copy has run. On a CPU both are plain.
"""

from __future__ import annotations

import torch


def to_device(values: list[list[int]], device: torch.device) -> torch.Tensor:
    """A (rows, n) int64 tensor of `values` on `device`, its copy queued without waiting for the GPU."""
    on_cuda = device.type == "cuda"
    host = torch.tensor(values, dtype=torch.long, pin_memory=on_cuda)
    return host.to(device, non_blocking=on_cuda)


class Readback:
    """A device tensor on its way to the host: on CUDA copied into pinned memory behind the work queued
    before it, with an event to wait on; `wait()` returns the host copy once it has arrived."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor

    def wait(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
        return self._host
