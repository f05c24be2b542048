"""Weights rearranged for fast inference (transposed, concatenated, block-diagonal), packed as an explicit step.

A module with `PackedWeights` reads its inference path's weights from `packed()`. The rule, in one place:

- `eval()` packs (what `from_pretrained` ends with); `train()` drops the packed copy;
- `.to()` / `.half()` / ... and `load_state_dict` repack a packed module, so the copy follows them;
- where gradients flow to the parameters, or nothing is packed (a module in training mode), `packed()` builds
  the tensors on every call from the parameters themselves (part of the autograd graph, always current).

Code that edits a packed module's parameters in place otherwise (a `copy_` under `no_grad`) calls `pack()` again
(`model.eval()` does it for a whole model). The packed tensors are never saved: a checkpoint keeps the modules'
own parameters.
"""

from __future__ import annotations

import torch
from torch import nn

_SLOT = "_packed_weights"


class PackedWeights(nn.Module):
    """Base of modules whose inference path reads rearranged weights; subclasses define `build_packed`."""

    def __init__(self):
        super().__init__()
        self.register_load_state_dict_post_hook(_repack_after_load)

    def build_packed(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError(f"{type(self).__name__} defines no packed weights")

    def packed(self) -> tuple[torch.Tensor, ...]:
        """The packed tensors: the copy made by `pack()` where there is one and no gradient is wanted, else built now."""
        kept = self.__dict__.get(_SLOT)
        if kept is None or (torch.is_grad_enabled() and any(p.requires_grad for p in self.weights())):
            return self.build_packed()
        return kept

    def weights(self) -> tuple[nn.Parameter, ...]:
        """The parameters `build_packed` reads. Subclasses name them directly: `parameters()` walks the module tree,
        which costs more than a small decode step's arithmetic."""
        return tuple(self.parameters())

    def pack(self) -> None:
        """Build the packed copy from the current parameters and keep it (until `train()` or the next `pack()`)."""
        with torch.no_grad():
            tensors = tuple(t.contiguous() for t in self.build_packed())
        if not torch.compiler.is_compiling():
            for t in tensors:
                torch._dynamo.mark_static_address(t)  # CUDA graphs read them in place, like parameters
        self.__dict__[_SLOT] = tensors

    def unpack(self) -> None:
        self.__dict__.pop(_SLOT, None)

    def is_packed(self) -> bool:
        return _SLOT in self.__dict__

    def _repack(self) -> None:
        if self.is_packed():
            self.pack()

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.unpack()
        elif not any(p.is_meta for p in self.parameters()):
            self.pack()
        return self

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._repack()
        return out


def _repack_after_load(module: PackedWeights, incompatible_keys) -> None:
    module._repack()
