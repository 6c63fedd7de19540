"""Counting where the host waits for the device, on any device.

On a GPU, the host queues kernels and runs ahead of them, until an operator needs a value the
device computed: a scalar read, a `nonzero` (its output size), a boolean-mask index, or a copy
back to the host. Each waits for every kernel queued before it, and the GPU idles while the
host queues the next ones. `torch.cuda.set_sync_debug_mode` finds them only on a GPU; this
mode counts the same operators on a CPU, so a test without a GPU can hold a shard to the
reads it is meant to make (one per exit head)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# operators whose output's size or value the host must know before it can go on
_READS = {
    aten._local_scalar_dense.default: "scalar read",  # .item(), int(t), bool(t), float(t)
    aten.item.default: "scalar read",  # the same, as inference mode dispatches it
    aten.is_nonzero.default: "scalar read",  # bool(t) of a one-element tensor
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.equal.default: "equal",
}
_INDEX = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _reads_host(func, args, kwargs) -> str | None:
    """Why `func(*args, **kwargs)` waits for the device, or None."""
    if func in _READS:
        return _READS[func]
    if func in _INDEX:  # a boolean mask index becomes a nonzero inside the kernel
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean index"
    if func.overloadpacket in (aten._to_copy, aten.to):  # .cpu() of a device tensor, or `shard.to_host`
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        target = [d for d in (kwargs.get("device"), *args[1:2]) if isinstance(d, (str, torch.device))]
        to_cpu = any(torch.device(d).type == "cpu" for d in target)
        # on a CPU every tensor is a host tensor: an explicit copy marks a read the device would make
        if to_cpu and source is not None and (source.device.type != "cpu" or kwargs.get("copy")):
            return "copy to host"
    return None


class HostReads(TorchDispatchMode):
    """`with HostReads() as reads: ...` counts, by reason, the operators run inside that make the
    host wait for the device (`reads.total`, `reads.by_reason`)."""

    def __init__(self):
        super().__init__()
        self.by_reason: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = _reads_host(func, args, kwargs)
        if reason is not None:
            self.by_reason[reason] += 1
        return func(*args, **kwargs)
