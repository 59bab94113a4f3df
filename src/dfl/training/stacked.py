"""R copies of a dense model as one module on (R, B, ...) inputs, in the HFTA style.

Each layer holding parameters becomes its stacked twin: a Linear's R weights are one (R, out,
in) tensor and its product one batched matmul (torch.baddbmm); dropout draws each run's mask
from that run's generator (run_dropout.py); flattening keeps the runs' dimension.
Parameter-free elementwise layers work on stacked tensors as they are, and so do the
containers whose forward only calls their layers and shape-agnostic tensor ops
(nn.Sequential, and the dense models that say so with `stackable = True`).

Why not torch.func.vmap, which stacks any model: on a CPU its per-operation wrapping costs more
than fusing saves on the lab's small steps (benchmarks/fused.py: 3 autoencoders at batch 16
trained 1.05x as fast as one after another under vmap, the MLP and the stacked autoencoder
0.7x, while the same step written as batched matmuls ran 1.5x as fast on 1 thread). Models
this module cannot stack (the CNNs, the ViTs) fuse through vmap (fused.py), equal to alone
just the same.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dfl.training.run_dropout import RunDropout

# Layers without parameters that act on every element, or on the last dimension only: the
# same on (R, B, ...) as on (B, ...).
ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Identity)


class StackedLinear(nn.Module):
    """R Linear layers: (R, B, ..., in) -> (R, B, ..., out), one batched matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None  # (R, out, in), set by `StackedModel.load`
        self.bias: torch.Tensor | None = None  # (R, out) or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed transposed, W (R, out, in) @ x^T (R, in, N): autograd then makes the weights'
        # gradient (R, out, in) as they lie, where x @ W^T makes it transposed and copies it
        # into place (the MLP's 784 x 256 layer: 1 ms a step at batch 64); a Linear after
        # this one reads its input transposed as it lies.
        cols = x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)  # (R, in, B * ...)
        if self.bias is None:
            out = torch.bmm(self.weight, cols)
        else:
            out = torch.baddbmm(self.bias[:, :, None], self.weight, cols)
        return out.transpose(1, 2).reshape(*x.shape[:-1], out.shape[1])


class StackedFlatten(nn.Module):
    """nn.Flatten(start_dim=1) of each run: (R, B, ...) -> (R, B, features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)


class StackedModel(nn.Module):
    """The stacked twin of a model; `load` hands it the runs' stacked parameters."""

    def __init__(self, model: nn.Module, linears: dict[str, StackedLinear]) -> None:
        super().__init__()
        self.model, self.linears = model, linears

    def load(self, params: dict[str, torch.Tensor]) -> None:
        """Point every stacked layer at its (R, ...) tensors in `params` (keyed as the lone
        model's state dict)."""
        for prefix, layer in self.linears.items():
            layer.weight = params[f"{prefix}.weight"]
            layer.bias = params.get(f"{prefix}.bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def __getattr__(self, name: str):  # the lone model's other methods (reconstruct_layer)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def can_stack(model: nn.Module) -> bool:
    """Whether `stacked_twin` can stack `model`: it holds no layer kind this module does not
    stack (a convolution, BatchNorm, attention) and no container whose forward may not work
    on stacked tensors."""
    return all(
        isinstance(module, (nn.Linear, nn.Dropout, *ELEMENTWISE, nn.Sequential, nn.ModuleList))
        or (isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1))
        or getattr(type(module), "stackable", False)
        for module in model.modules()
    )


def stacked_twin(model: nn.Module) -> StackedModel:
    """`model`'s stacked twin (no parameters of its own until `load`); `model` passes
    `can_stack`."""
    twin = copy.deepcopy(model).to("meta")
    linears: dict[str, StackedLinear] = {}
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.Linear):
            linears[name] = StackedLinear()
            replace_module(twin, name, linears[name])
        elif isinstance(module, nn.Flatten):
            replace_module(twin, name, StackedFlatten())
        elif isinstance(module, nn.Dropout):
            replace_module(twin, name, RunDropout(module.p, feature=False))
    return StackedModel(twin, linears)


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where `root`'s submodule `name` ("encoder.1") is."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)
