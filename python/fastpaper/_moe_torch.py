"""torch.library ops of the expert-by-expert MoE MLP: ``torch.ops.fastpaper.moe_mlp`` and its
backward ``torch.ops.fastpaper.moe_mlp_backward``.

The C++/CUDA kernels (fastpaper/moe.h) do the work; outputs and the CUDA workspace are allocated
by torch. scores arrive in the compute type (float32, or float64 for float64 x); the public
wrapper :func:`fastpaper.moe.moe_mlp` casts and validates. The backward recomputes the hidden
activations, so the forward saves only its inputs.
"""

from __future__ import annotations

import torch

from . import _native
from ._torch import LIB, device_guard, stream_of

_C = _native.load("moe")

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 0}

LIB.define("moe_mlp(Tensor x, Tensor scores, Tensor indices, Tensor W1, Tensor b1, Tensor W2, "
           "Tensor b2) -> Tensor")
LIB.define("moe_mlp_backward(Tensor dy, Tensor x, Tensor scores, Tensor indices, Tensor W1, "
           "Tensor b1, Tensor W2, Tensor b2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def _dims(x, scores, W1):
    return int(x.shape[0]), int(x.shape[1]), int(W1.shape[2]), int(W1.shape[0]), int(scores.shape[1])


def _workspace(x, scores, W1, backward):
    if x.device.type != "cuda":
        return None
    n, d, h, e, k = _dims(x, scores, W1)
    size = _C.workspace_size(n, d, h, e, k, True, backward, x.dtype == torch.float64,
                             _DTYPE_CODE[x.dtype])
    return torch.empty(size, dtype=torch.uint8, device=x.device) if size else None


def _c(t):
    return t.detach().contiguous()


def _forward_kernel(x, scores, indices, W1, b1, W2, b2):
    x, scores, indices, W1, b1, W2, b2 = map(_c, (x, scores, indices, W1, b1, W2, b2))
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    n, d, h, e, k = _dims(x, scores, W1)
    if n:
        with device_guard(x):
            _C.forward(x, scores, indices, W1, b1, W2, b2, y, _workspace(x, scores, W1, False),
                       n, d, h, e, k, stream_of(x))
    return y


def _backward_kernel(dy, x, scores, indices, W1, b1, W2, b2):
    dy, x, scores, indices, W1, b1, W2, b2 = map(_c, (dy, x, scores, indices, W1, b1, W2, b2))
    outs = [torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in (x, scores, W1, b1, W2, b2)]
    n, d, h, e, k = _dims(x, scores, W1)
    with device_guard(x):
        _C.backward(dy, x, scores, indices, W1, b1, W2, b2, *outs,
                    _workspace(x, scores, W1, True), n, d, h, e, k, stream_of(x))
    return tuple(outs)


for _device in ("CPU", "CUDA"):
    LIB.impl("moe_mlp", _forward_kernel, _device)
    LIB.impl("moe_mlp_backward", _backward_kernel, _device)


@torch.library.register_fake("fastpaper::moe_mlp", lib=LIB)
def _forward_fake(x, scores, indices, W1, b1, W2, b2):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastpaper::moe_mlp_backward", lib=LIB)
def _backward_fake(dy, x, scores, indices, W1, b1, W2, b2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (x, scores, W1, b1, W2, b2))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, scores, indices, W1, b1, W2, b2 = ctx.saved_tensors
    dx, dscores, dW1, db1, dW2, db2 = torch.ops.fastpaper.moe_mlp_backward(
        grad, x, scores, indices, W1, b1, W2, b2)
    return dx, dscores, None, dW1, db1, dW2, db2


torch.library.register_autograd("fastpaper::moe_mlp", _backward, setup_context=_setup, lib=LIB)
