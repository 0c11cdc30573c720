"""Mixed precision: fp32 master weights and fp32 AdamW state behind the model's own (bf16) parameters.

    opt = MasterWeightAdamW(model.parameters(), lr=lr, betas=betas, weight_decay=wd)
    for each micro-batch:  loss.backward(); opt.accumulate_grads()   # p.grad (bf16) -> fp32 master grad
    grad_norm = opt.clip_grad_norm_(max_norm)                          # over the fp32 master grads
    opt.step()                                                         # AdamW on masters, then p <- bf16(master)
    opt.zero_grad()

The model's parameters stay the same tensor objects: `step` overwrites their data in place with
`master.to(p.dtype)` (round to nearest even), so the engine, which holds those tensors, and any CUDA graph
captured on them see the new weights, and the sampler and the trainer's forward read the very same bits.
An Adam step of ~lr (1e-6) is far below half an ulp of a bf16 weight (~6e-5 at 0.02) and would round away if
applied to bf16 weights; on fp32 masters it accumulates until it shows in the bf16 copy.
Gradients: `accumulate_grads` after each micro-batch's backward adds p.grad into the fp32 master grad (exact
upcast, one fp32 add) and frees p.grad, so accumulation never happens in bf16; `step` calls it once more for
gradients still waiting. fp32 parameters are their own masters (autograd accumulates their grads in fp32):
with a float32 model this is plain `torch.optim.AdamW` on the parameters, bit for bit.
Checkpoints: `state_dict` holds the AdamW state and the fp32 masters of the low-precision parameters;
`load_state_dict` restores both and refreshes the model's copy. Left out: other optimizers, fp16 loss scaling,
sharded (ZeRO) masters, stochastic rounding, parameter groups.
"""
from __future__ import annotations

import torch

from onpolicy.profiling import phase


class MasterWeightAdamW:
    """AdamW over fp32 masters of `params` (model parameters, any float dtype); see the module docstring."""

    def __init__(self, params, **adamw_kwargs):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("MasterWeightAdamW: no parameters with requires_grad=True")
        for p in self.params:
            if not p.dtype.is_floating_point:
                raise ValueError(f"MasterWeightAdamW: parameters must be floating point, got {p.dtype}")
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone() for p in self.params]
        self._low = [i for i, p in enumerate(self.params) if p.dtype != torch.float32]
        self.optimizer = torch.optim.AdamW(self.masters, **adamw_kwargs)
        self.steps_started = 0  # counted before a step changes anything: a failure after it left mixed state

    @property
    def param_groups(self) -> list[dict]:
        """The AdamW param groups (set "lr" here)."""
        return self.optimizer.param_groups

    @torch.no_grad()
    def accumulate_grads(self) -> None:
        """Move each low-precision p.grad into its fp32 master grad (+=) and free it; call after every backward."""
        for i in self._low:
            p, m = self.params[i], self.masters[i]
            if p.grad is None:
                continue
            if m.grad is None:
                m.grad = p.grad.float()
            else:
                m.grad.add_(p.grad)
            p.grad = None

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip the master grads to total L2 norm `max_norm`; returns the norm before clipping."""
        self.accumulate_grads()
        grads = [m for m in self.masters if m.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm)) if grads else 0.0

    def step(self) -> None:
        """AdamW step on the masters, then copy them into the model's parameters in place."""
        self.steps_started += 1
        self.accumulate_grads()
        self.optimizer.step()
        self._refresh_params()

    def zero_grad(self) -> None:
        for t in self.masters + self.params:
            t.grad = None

    @torch.no_grad()
    def _refresh_params(self) -> None:
        with phase("weight_copy"):
            for i in self._low:
                self.params[i].copy_(self.masters[i])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "masters": [self.masters[i].detach().clone() for i in self._low]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore AdamW state and masters (checked against this model's low-precision parameters)."""
        if not isinstance(state, dict) or set(state) != {"optimizer", "masters"}:
            raise ValueError("MasterWeightAdamW.load_state_dict: state must be a dict with keys 'optimizer' and "
                             "'masters' (from MasterWeightAdamW.state_dict; a plain AdamW state cannot restore "
                             "fp32 masters)")
        masters = state["masters"]
        want = [tuple(self.masters[i].shape) for i in self._low]
        got = [tuple(m.shape) for m in masters]
        if got != want:
            raise ValueError(f"MasterWeightAdamW.load_state_dict: {len(got)} masters of shapes {got[:3]}... do not "
                             f"match this model's {len(want)} low-precision parameters {want[:3]}...")
        for i, m in zip(self._low, masters):
            self.masters[i].copy_(m)
        self.optimizer.load_state_dict(state["optimizer"])
        self._refresh_params()
