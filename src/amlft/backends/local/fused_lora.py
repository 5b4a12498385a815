"""A peft LoRA Linear whose forward and backward are one autograd node instead of six.

Why: peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` with separate ops, so
every adapted layer makes full-width passes over its output for the scaling multiply and
the add, and again in backward for the multiply's gradient and for summing the two input
gradients. With small models on a CPU those elementwise passes are a quarter of a training
step (profiled on SmolLM2-135M: `aten::mul` 14%, `aten::add` 11%). Here the scaling is
applied to the rank-r intermediate and both sums are `addmm_` into the GEMM result, so
only the matrix products remain. Same parameters, same names, same saved adapter: the
module is a subclass of peft's own `lora.Linear`, plugged in through peft's custom-module
dispatch (`LoraConfig._register_custom_module`), and anything it does not handle
(merged or disabled adapters, several active adapters, DoRA and other variants, mixed
dtypes, a base layer that is not a plain `nn.Linear`) takes peft's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear

__all__ = ["FusedLoraLinear", "fused_lora_config"]


class _LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s (x_d A^T) B^T, where x_d is x after LoRA dropout (x itself without dropout)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
        x2, xd2 = x.reshape(-1, x.shape[-1]), x_d.reshape(-1, x_d.shape[-1])
        y = F.linear(x2, weight, bias)
        h = xd2 @ a.t()                                   # the rank-r intermediate
        y.addmm_(h, b.t(), alpha=scaling)
        ctx.save_for_backward(xd2, h, weight, a, b)
        ctx.scaling, ctx.shape, ctx.same_input = scaling, x.shape, x_d is x
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xd2, h, weight, a, b = ctx.saved_tensors
        g2 = grads[0].reshape(-1, grads[0].shape[-1])
        gh = (g2 @ b).mul_(ctx.scaling)                   # gradient at the rank-r intermediate
        grad_a = gh.t() @ xd2 if ctx.needs_input_grad[4] else None
        grad_b = (g2.t() @ h).mul_(ctx.scaling) if ctx.needs_input_grad[5] else None
        grad_x = grad_xd = None
        if ctx.same_input and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            grad_x = (g2 @ weight).addmm_(gh, a).view(ctx.shape)   # both paths into one buffer
        else:
            if ctx.needs_input_grad[0]:
                grad_x = (g2 @ weight).view(ctx.shape)
            if ctx.needs_input_grad[1]:
                grad_xd = (gh @ a).view(ctx.shape)
        return grad_x, grad_xd, None, None, grad_a, grad_b, None


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear with the single-adapter training path fused (see the module docstring)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        fused = self._fusable(x, args, kwargs)
        if fused is None:
            return super().forward(x, *args, **kwargs)
        name, base = fused
        x_d = self.lora_dropout[name](x)
        out: torch.Tensor = _LoraLinearFunction.apply(x, x_d, base.weight, base.bias, self.lora_A[name].weight,
                                                      self.lora_B[name].weight, float(self.scaling[name]))
        return out

    def _fusable(self, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any] | None:
        """(adapter, base layer) when the plain single-adapter path applies, else None (peft's forward)."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        base = self.get_base_layer()
        if (name not in self.lora_A or name in getattr(self, "lora_variant", {})
                or getattr(self, "use_dora", {}).get(name) or self.lora_B[name].bias is not None
                or self.fan_in_fan_out or type(base) is not torch.nn.Linear or base.weight.requires_grad
                or (base.bias is not None and base.bias.requires_grad)):
            return None  # DoRA and other variants, a trained LoRA bias, Conv1D-style weights, a trained base
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if not (x.dtype == base.weight.dtype == a.dtype == b.dtype):
            return None  # peft casts between the adapter's and the base's dtypes; leave that to it
        return name, base


def fused_lora_config(**kwargs: Any) -> LoraConfig:
    """A LoraConfig whose Linear targets become FusedLoraLinear; everything else as peft builds it.

    A peft without custom-module dispatch (before 0.14) gets the plain config: peft's own layers."""
    config = LoraConfig(**kwargs)
    if hasattr(config, "_register_custom_module"):
        config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    return config
