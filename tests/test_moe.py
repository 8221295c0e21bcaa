"""fastpaper.moe.moe_mlp: the expert-by-expert MoE MLP op against a per-token reference."""

import pytest
import torch
import torch.nn.functional as F

from fastpaper import moe

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# tolerance of the op against the float64 reference, by storage dtype (inputs rounded first)
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5),
       torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def reference(x, scores, indices, W1, b1, W2, b2):
    """Per-token loop in float64: y[t] = sum_j s[t,j] * expert_{i[t,j]}(x[t])."""
    x, scores, W1, b1, W2, b2 = (t.double() for t in (x, scores, W1, b1, W2, b2))
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros(W2.shape[2], dtype=torch.float64)
        for j in range(indices.shape[1]):
            e = int(indices[t, j])
            acc = acc + scores[t, j] * (F.gelu(x[t] @ W1[e] + b1[e]) @ W2[e] + b2[e])
        rows.append(acc)
    if not rows:
        return x.new_zeros(0, W2.shape[2])
    return torch.stack(rows)


def make(n, d, h, e, k, dtype=torch.float64, device="cpu", seed=0, experts_used=None):
    """Random inputs; indices are distinct experts per token, drawn from `experts_used`."""
    g = torch.Generator().manual_seed(seed)
    pool = list(range(e)) if experts_used is None else list(experts_used)
    idx = torch.stack([torch.tensor(pool)[torch.randperm(len(pool), generator=g)[:k]]
                       for _ in range(n)]) if n else torch.zeros(0, k, dtype=torch.int64)
    scores = torch.rand(n, k, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    W1 = torch.randn(e, d, h, generator=g, dtype=torch.float64) / d ** 0.5
    b1 = torch.randn(e, h, generator=g, dtype=torch.float64) * 0.1
    W2 = torch.randn(e, h, d, generator=g, dtype=torch.float64) / h ** 0.5
    b2 = torch.randn(e, d, generator=g, dtype=torch.float64) * 0.1
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    return (x.to(device, dtype), scores.to(device, sdt), idx.to(device), W1.to(device, dtype),
            b1.to(device, dtype), W2.to(device, dtype), b2.to(device, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,h,e,k", [(37, 16, 24, 5, 2), (1, 8, 8, 4, 4), (300, 12, 20, 6, 1),
                                       (150, 32, 16, 3, 3)])
def test_forward_matches_reference(dtype, n, d, h, e, k):
    args = make(n, d, h, e, k, dtype)
    y = moe.moe_mlp(*args)
    assert y.dtype == dtype and y.shape == (n, d)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.double(), reference(*args), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_empty_experts_and_empty_input(dtype):
    args = make(50, 8, 12, 9, 2, dtype, experts_used=[1, 6])  # 7 of 9 experts get no token
    torch.testing.assert_close(moe.moe_mlp(*args).double(), reference(*args),
                               rtol=TOL[dtype][0], atol=TOL[dtype][1])
    empty = make(0, 8, 12, 4, 2, dtype)
    y = moe.moe_mlp(*empty)
    assert y.shape == (0, 8)
    params = [t.clone().requires_grad_() for t in empty[3:]]
    moe.moe_mlp(*empty[:3], *params).sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in params)


def test_deterministic_and_noncontiguous():
    x, s, i, W1, b1, W2, b2 = make(200, 16, 16, 4, 2, torch.float32)
    a = moe.moe_mlp(x, s, i, W1, b1, W2, b2)
    assert torch.equal(a, moe.moe_mlp(x, s, i, W1, b1, W2, b2))
    xt = x.t().contiguous().t()  # same values, column-major strides
    W1t = W1.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(a, moe.moe_mlp(xt, s, i.to(torch.int32), W1t, b1, W2, b2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_match_reference(dtype):
    args = make(40, 12, 10, 5, 3, dtype, seed=3)
    ins = [t.clone().requires_grad_() if t.is_floating_point() else t for t in args]
    ref_in = [t.detach().double().requires_grad_() if t.is_floating_point() else t for t in args]
    g = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (moe.moe_mlp(*ins) * g.to(dtype)).sum().backward()
    (reference(*ref_in) * g).sum().backward()
    rtol, atol = TOL[dtype]
    for name, a, r in zip(["x", "scores", "indices", "W1", "b1", "W2", "b2"], ins, ref_in):
        if not a.is_floating_point():
            continue
        assert a.grad.dtype == a.dtype, name
        scale = 4 if dtype in (torch.bfloat16, torch.float16) else 1
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=rtol * scale,
                                   atol=atol * scale * max(1.0, float(r.grad.abs().max())),
                                   msg=name)


def test_gradcheck_float64():
    args = make(9, 5, 6, 4, 2, torch.float64, seed=5)
    ins = tuple(t.clone().requires_grad_() if t.is_floating_point() else t for t in args)
    assert torch.autograd.gradcheck(lambda *a: moe.moe_mlp(*a), ins)


def test_opcheck():
    from fastpaper import _moe_torch  # noqa: F401

    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x, s, i, W1, b1, W2, b2 = make(13, 6, 5, 4, 2, dtype, seed=6)
        args = (x.requires_grad_(), s.requires_grad_(), i, W1.requires_grad_(), b1, W2, b2)
        torch.library.opcheck(torch.ops.fastpaper.moe_mlp, args)
        dy = torch.randn_like(x)
        torch.library.opcheck(torch.ops.fastpaper.moe_mlp_backward,
                              (dy, x.detach(), s.detach(), i, W1.detach(), b1, W2, b2))


def test_torch_loop_and_dense_baselines_agree():
    args = make(60, 10, 14, 6, 2, torch.float64, seed=7)
    ref = reference(*args)
    torch.testing.assert_close(moe.moe_mlp_loop(*args), ref)
    torch.testing.assert_close(moe.moe_mlp_dense(*args), ref)


def test_bad_input():
    x, s, i, W1, b1, W2, b2 = make(6, 4, 5, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="indices"):
        moe.moe_mlp(x, s, torch.full_like(i, 3), W1, b1, W2, b2)
    with pytest.raises(ValueError, match="indices"):
        moe.moe_mlp(x, s, -torch.ones_like(i), W1, b1, W2, b2)
    with pytest.raises(ValueError, match="x"):
        moe.moe_mlp(x[None], s, i, W1, b1, W2, b2)
    with pytest.raises(ValueError, match="W1"):
        moe.moe_mlp(x, s, i, W1[:, :3], b1, W2, b2)
    with pytest.raises(ValueError, match="b2"):
        moe.moe_mlp(x, s, i, W1, b1, W2, b2[:, :3])
    with pytest.raises(ValueError, match="indices"):
        moe.moe_mlp(x, s, i[:, :1], W1, b1, W2, b2)
    with pytest.raises(ValueError, match="k"):
        moe.moe_mlp(x, s.repeat(1, 2), i.repeat(1, 2), W1, b1, W2, b2)
    with pytest.raises(TypeError, match="W2"):
        moe.moe_mlp(x, s, i, W1, b1, W2.double(), b2)
    with pytest.raises(TypeError, match="indices"):
        moe.moe_mlp(x, s, i.float(), W1, b1, W2, b2)
    with pytest.raises(TypeError, match="x"):
        moe.moe_mlp(x.to(torch.int32), s, i, W1, b1, W2, b2)
    with pytest.raises(TypeError, match="scores"):
        moe.moe_mlp(x, [[1.0]], i, W1, b1, W2, b2)


# ------------------------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,h,e,k,used", [(37, 16, 24, 5, 2, None), (1, 8, 8, 4, 4, None),
                                            (2000, 64, 96, 8, 2, [0, 5]),
                                            (9608, 384, 384, 16, 4, None),
                                            (500, 40, 72, 16, 16, None)])
def test_cuda_forward_backward_match_cpu(dtype, n, d, h, e, k, used):
    cpu = make(n, d, h, e, k, dtype, experts_used=used, seed=11)
    gpu = [t.cuda() for t in cpu]
    y_cpu, y_gpu = moe.moe_mlp(*cpu), moe.moe_mlp(*gpu)
    rtol, atol = TOL[dtype]
    if dtype == torch.float32:  # TF32 tensor cores on the GPU
        rtol, atol = 5e-3, 5e-3
    torch.testing.assert_close(y_gpu.cpu().double(), y_cpu.double(), rtol=rtol, atol=atol * 4)
    assert torch.equal(y_gpu, moe.moe_mlp(*gpu))  # deterministic
    g = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for args in (cpu, gpu):
        ins = [t.clone().requires_grad_() if t.is_floating_point() else t for t in args]
        (moe.moe_mlp(*ins) * g.to(args[0].device, dtype)).sum().backward()
        grads.append([t.grad for t in ins if t.is_floating_point()])
    for a, b in zip(*grads):
        scale = max(1.0, float(a.abs().max()))
        torch.testing.assert_close(b.cpu().double(), a.double(), rtol=rtol * 4,
                                   atol=atol * 8 * scale)


@pytest.mark.cuda
def test_cuda_model_matches_cpu():
    from fastpaper.models import M3ViT

    torch.manual_seed(0)
    model = M3ViT(img_size=(64, 96), depth=4).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x, "depth")
        out = model.cuda()(x.cuda(), "depth")
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-2, atol=1e-2)
