"""A fused, chunked vocabulary projection for losses that are per-token weighted sums of log-probs.

For a loss whose gradient with respect to each response token's log-prob, ``w_t = d loss / d log p_t``,
is known as soon as that token's log-prob is (NLL: -1; DFT: -sg(p_t); prob: -alpha p_t^alpha), the
gradient with respect to the token's logits is ``w_t (onehot(y_t) - softmax(z_t))``. So each chunk of
response tokens is projected once, in forward, and its contributions to the gradients of the hidden states
and of the ``lm_head`` weight are computed there and kept; backward only returns them. Nothing is
recomputed (the checkpointed path projects every chunk twice) and nothing vocabulary-sized outlives its
chunk except the weight's gradient, which every method needs. The idea is Liger-Kernel's fused linear
cross-entropy, generalised to any per-token weight; this is our own code.

Learners opt in with ``token_grad(logprobs, cfg) -> w`` (detached, float32); the training loop then uses
this path whenever the policy is read at temperature 1 only (``train._projection``), and the checkpointed
one otherwise (ratio learners at another temperature, sequence-level weights).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class _FusedWeightedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, token_grad: Callable[[torch.Tensor], torch.Tensor]):
        # hidden [N, H], weight [V, H], targets [N]
        compute = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else torch.float32
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w_compute = weight.to(compute)
            grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)  # [N, H]
            grad_weight = torch.zeros(weight.shape if ctx.needs_input_grad[1] else (0,), dtype=torch.float32,
                                      device=weight.device)  # [V, H]
            logprobs = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # [N]
            surrogate = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for begin in range(0, hidden.shape[0], chunk):
                h = hidden[begin : begin + chunk].to(compute)  # [n, H]
                y = targets[begin : begin + chunk].unsqueeze(-1)  # [n, 1]
                logits = (h @ w_compute.T).float()  # [n, V]
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [n, 1]
                lp = (logits.gather(-1, y) - lse).squeeze(-1)  # [n]
                w = token_grad(lp).to(torch.float32)  # [n]: d loss / d log p, known now
                # d(sum w log p)/d logits = w (onehot - softmax): built in the logits' own buffer
                g = logits.sub_(lse).exp_().mul_(-w.unsqueeze(-1))  # [n, V]
                g.scatter_add_(-1, y, w.unsqueeze(-1))
                g = g.to(compute)
                grad_hidden[begin : begin + chunk] = (g @ w_compute).float()
                if ctx.needs_input_grad[1]:  # a frozen head (LoRA) needs no [V, H] gradient
                    grad_weight.addmm_(g.T.float(), h.float())  # .float() of float32 is the tensor itself
                logprobs[begin : begin + chunk] = lp
                surrogate += (w * lp).sum()
                del logits, g
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(logprobs)
        return surrogate, logprobs

    @staticmethod
    def backward(ctx, grad_surrogate, _grad_logprobs):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_weight = grad_weight.mul_(grad_surrogate).to(weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden.mul_(grad_surrogate).to(hidden_dtype), grad_weight, None, None, None


def fused_weighted_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                            token_grad: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(surrogate, logprobs)``: ``surrogate = sum_t w_t log p_t`` with ``w_t = token_grad(log p_t)``, whose
    gradient (with respect to ``hidden`` and ``weight``) is the loss's; ``logprobs`` [N] detached, for the loss's
    value and metrics. ``chunk`` response tokens are projected at a time."""
    if hidden.shape[0] == 0:
        zero = (hidden.sum() + weight.sum()) * 0.0
        return zero, torch.zeros(0, dtype=torch.float32, device=hidden.device)
    return _FusedWeightedLogprobs.apply(hidden, weight, targets, max(1, chunk), token_grad)
