"""`fastpaper demo`: each area's main job on built-in data, measured against its plain-PyTorch baseline.

The demo is a list of sections (:data:`SECTIONS`), one per area. A section is a function taking a
:class:`DemoConfig` and returning a plain dict (JSON-serializable)::

    {"name": "bfp", "title": ..., "description": ...,
     "tables": [{"title": ...,
                 "columns": [[key, header, format_spec], ...],   # how to print the rows
                 "rows": [{key: value, ...}, ...]}, ...],
     "notes": [str, ...]}

so that a new area adds one function and one entry in :data:`SECTIONS`; :func:`run` runs them and
:func:`format_section` prints one. ``small=True`` shrinks every workload to a few seconds in total
(used by the tests).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence


@dataclass(frozen=True)
class DemoConfig:
    """What every section is told: where to run, how big, which seed."""

    device: str = "cpu"
    small: bool = False
    seed: int = 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_ms(fn: Callable[[], Any], device: str, warmup: int = 1, repeats: int = 3) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` untimed calls, synchronizing CUDA around
    each call so the time covers the kernels, not just their launch."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


# --------------------------------------------------------------------------------------------- bfp

def kv_cache_like(shape: Sequence[int], n_outlier_channels: int, outlier_scale: float, seed: int,
                  device: str, dtype=None):
    """A [heads, tokens, head_dim] tensor shaped like an LLM's key cache: unit-variance Gaussian
    entries whose magnitude drifts per head, plus ``n_outlier_channels`` head_dim channels that are
    ``outlier_scale`` times larger in every token (the outlier channels Trukhanov & Soloveychik
    observe in K). Returns the tensor and the outlier channel indices."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    heads, _, head_dim = shape
    x = torch.randn(*shape, generator=g)
    x *= torch.exp2(torch.rand(heads, 1, 1, generator=g) * 2.0 - 1.0)
    channels = torch.randperm(head_dim, generator=g)[:n_outlier_channels].sort().values
    x[..., channels] *= outlier_scale
    return x.to(device=device, dtype=dtype or torch.bfloat16), channels.tolist()


def bfp_section(config: DemoConfig) -> dict:
    """BFP codec on a KV-cache-shaped tensor: error, size and speed of BFP12 / BFP16 / MXINT8."""
    import torch

    from . import bfp
    from .baselines import bfp as base

    shape = (2, 256, 128) if config.small else (8, 4096, 128)
    x, outliers = kv_cache_like(shape, n_outlier_channels=4, outlier_scale=20.0, seed=config.seed,
                                device=config.device)
    warmup, repeats = 1, 3
    dense_bytes = x.numel() * x.element_size()
    x64 = x.double()
    normal = torch.ones(shape[-1], dtype=torch.bool, device=x.device)
    normal[outliers] = False

    def rel_err(y, mask=None):
        d, r = (y.double() - x64), x64
        if mask is not None:
            d, r = d[..., mask], r[..., mask]
        return float(d.norm() / r.norm())

    accuracy, speed = [], []
    for name, fmt in (("BFP12", bfp.BFP12), ("BFP16", bfp.BFP16), ("MXINT8", bfp.MXINT8)):
        packed = bfp.pack(x, fmt)
        y = bfp.unpack(packed)
        ref = base.pack(x, fmt)
        identical = (torch.equal(ref.mantissas, packed.mantissas)
                     and torch.equal(ref.exponents, packed.exponents))
        accuracy.append({
            "format": name,
            "block": fmt.block,
            "bits_per_element": packed.bits_per_element,
            "packed_mib": packed.nbytes / 2**20,
            "bf16_mib": dense_bytes / 2**20,
            "size_vs_bf16": packed.nbytes / dense_bytes,
            "rel_error": rel_err(y),
            "rel_error_normal_channels": rel_err(y, normal),
            "baseline_bit_identical": identical,
        })
        moved = dense_bytes + packed.nbytes  # read + written, the same for pack and unpack
        for op, fast, plain in (("pack", lambda: bfp.pack(x, fmt), lambda: base.pack(x, fmt)),
                                ("unpack", lambda: bfp.unpack(packed), lambda: base.unpack(packed))):
            fast_ms = time_ms(fast, config.device, warmup, repeats)
            plain_ms = time_ms(plain, config.device, warmup, repeats)
            speed.append({
                "format": name, "op": op, "bytes": moved,
                "fastpaper_ms": fast_ms, "fastpaper_gb_per_s": moved / fast_ms / 1e6,
                "torch_ms": plain_ms, "torch_gb_per_s": moved / plain_ms / 1e6,
                "speedup": plain_ms / fast_ms,
            })

    bad = [r["format"] for r in accuracy if not r["baseline_bit_identical"]]
    return {
        "name": "bfp",
        "title": "BFP codec (Trukhanov & Soloveychik 2024): pack a KV cache",
        "description": (f"bf16 tensor {list(shape)} [heads, tokens, head_dim] on {config.device} with "
                        f"{len(outliers)} outlier channels x20 ({outliers}); blocks run along "
                        "head_dim."),
        "tables": [
            {"title": "accuracy and size",
             "columns": [
                 ["format", "format", "s"],
                 ["block", "block", "d"],
                 ["bits_per_element", "bits/element", ".3f"],
                 ["packed_mib", "packed MiB", ".3f"],
                 ["bf16_mib", "bf16 MiB", ".3f"],
                 ["size_vs_bf16", "size vs bf16", ".3f"],
                 ["rel_error", "rel. error", ".2e"],
                 ["rel_error_normal_channels", "rel. error, ordinary channels", ".2e"],
             ],
             "rows": accuracy},
            {"title": "throughput: fastpaper vs plain PyTorch (GB/s = bytes read + written per second)",
             "columns": [
                 ["format", "format", "s"],
                 ["op", "op", "s"],
                 ["fastpaper_ms", "fastpaper ms", ".3f"],
                 ["fastpaper_gb_per_s", "GB/s", ".2f"],
                 ["torch_ms", "plain torch ms", ".3f"],
                 ["torch_gb_per_s", "GB/s", ".2f"],
                 ["speedup", "speedup", ".2f"],
             ],
             "rows": speed},
        ],
        "notes": [
            "rel. error = ||unpack(pack(x)) - x|| / ||x||. The outlier channels share blocks with "
            "ordinary channels and set the shared exponent, so ordinary channels lose most of "
            "their precision.",
            "plain torch = fastpaper.baselines.bfp, vectorized PyTorch writing the same bytes; "
            + ("bit-identical to fastpaper here." if not bad else
               f"NOT bit-identical for {', '.join(bad)}."),
        ],
    }


# ----------------------------------------------------------------------------------------- pararnn

def pararnn_section(config: DemoConfig) -> dict:
    """ParaGRU / ParaLSTM solved in parallel over time (Newton + scan) vs the sequential loop."""
    import torch

    from . import pararnn
    from .nn import ParaGRU, ParaLSTM

    b, t, d, n = (2, 256, 16, 32) if config.small else (4, 1024, 64, 128)
    g = torch.Generator().manual_seed(config.seed)
    x = torch.randn(b, t, d, generator=g).to(config.device)
    rows = []
    with torch.no_grad():
        for cls in (ParaGRU, ParaLSTM):
            torch.manual_seed(config.seed)
            m = cls(d, n).to(config.device)
            m.mode = "loop"  # the Python loop over t (the baseline)
            y_seq = m(x)[0]
            seq_ms = time_ms(lambda: m(x), config.device)
            m.mode = "parallel"
            y_par = m(x)[0]
            info = m.last_info
            par_ms = time_ms(lambda: m(x), config.device)
            rows.append({"cell": cls.__name__, "sequential_ms": seq_ms, "parallel_ms": par_ms,
                         "speedup": seq_ms / par_ms, "iterations": info.iterations,
                         "converged": str(info.converged),
                         "max_abs_diff": float((y_par - y_seq).abs().max())})
        J = (torch.rand(b, t, n, generator=g) * 1.8 - 0.9).to(config.device)
        r = torch.randn(b, t, n, generator=g).to(config.device)

        def loop():
            h, out = torch.zeros_like(r[:, 0]), torch.empty_like(r)
            for s in range(t):
                h = J[:, s] * h + r[:, s]
                out[:, s] = h
            return out

        scan_err = float((pararnn.linear_scan(J, r) - loop()).abs().max())
        loop_ms = time_ms(loop, config.device)
        scan_ms = time_ms(lambda: pararnn.linear_scan(J, r), config.device)
    return {
        "name": "pararnn",
        "title": "ParaRNN (2025): nonlinear RNNs solved in parallel over time by Newton + scan",
        "description": (f"float32 x [{b}, {t}, {d}] -> hidden {n} on {config.device}; parallel = "
                        "the fused Newton kernel (mode='parallel': residual, Jacobian and scan in "
                        "one C++/CUDA kernel), sequential = a Python loop over t."),
        "tables": [
            {"title": "cells: parallel vs sequential forward",
             "columns": [
                 ["cell", "cell", "s"],
                 ["sequential_ms", "sequential ms", ".2f"],
                 ["parallel_ms", "parallel ms", ".2f"],
                 ["speedup", "speedup", ".2f"],
                 ["iterations", "Newton its", "d"],
                 ["converged", "converged", "s"],
                 ["max_abs_diff", "max |diff|", ".1e"],
             ],
             "rows": rows},
            {"title": "linear scan h_t = J_t * h_{t-1} + r_t (diagonal)",
             "columns": [
                 ["loop_ms", "torch loop ms", ".2f"],
                 ["scan_ms", "fastpaper ms", ".3f"],
                 ["speedup", "speedup", ".1f"],
                 ["max_abs_diff", "max |diff|", ".1e"],
             ],
             "rows": [{"loop_ms": loop_ms, "scan_ms": scan_ms, "speedup": loop_ms / scan_ms,
                       "max_abs_diff": scan_err}]},
        ],
        "notes": [
            "Newton stops when max|delta| <= 1e-5 (1 + max|h|); the first k steps are exact after "
            "k iterations, so it always ends by T iterations.",
            "On a CPU the fused sequential kernel (mode='sequential') is faster still: Newton "
            "repeats the sequential work a few times and only pays off with parallel hardware.",
        ],
    }


# ------------------------------------------------------------------------------------------ krylov

def krylov_section(config: DemoConfig) -> dict:
    """A sorted Darcy sequence solved by GMRES(40), GCRO-DR(40, 20) fresh per system, recycled,
    recycled in greedy-sorted order, and that with ILU(0) in mixed precision (CPU; scipy sparse
    matrices)."""
    from . import krylov
    from .krylov_pde import sample_systems

    grid, count = (34, 6) if config.small else (82, 16)
    params, As, bs = sample_systems("darcy", grid, count, seed=config.seed)
    t0 = time.perf_counter()
    krylov.sort_systems(params, "greedy")  # timed on its own: the cost of sorting
    sort_ms = (time.perf_counter() - t0) * 1e3
    rows = []

    def add(name, solve_all):
        t = time.perf_counter()
        infos = solve_all()
        ms = (time.perf_counter() - t) * 1e3 / count
        rows.append({"method": name, "matvecs": sum(i.matvecs for i in infos) / count,
                     "ms": ms, "converged": sum(bool(i.converged) for i in infos)})

    add("GMRES(40)", lambda: [krylov.gmres(A, b, m=40)[1] for A, b in zip(As, bs)])
    for name, recycle, srt in (("GCRO-DR(40,20) fresh", False, None),
                               ("GCRO-DR(40,20) recycled", True, None),
                               ("GCRO-DR(40,20) recycled + sorted", True, "greedy")):
        add(name, lambda r=recycle, s=srt: krylov.solve_sequence(
            As, bs, params=params, sort=s, recycle=r, m=40, k=20).infos)
    add("GCRO-DR(40,20) recycled + sorted, ILU(0), mixed precision",
        lambda: krylov.solve_sequence(As, bs, params=params, sort="greedy", m=40, k=20, M="ilu0",
                                      precision="mixed").infos)
    base = rows[0]["ms"]
    for r in rows:
        r["speedup"] = base / r["ms"]
        r["converged"] = f"{r['converged']}/{count}"
    return {
        "name": "krylov",
        "title": "krylov: GCRO-DR with subspace recycling on a Darcy sequence",
        "description": f"{count} Darcy systems -div(exp(GRF) grad u) = 1, n = {(grid - 2) ** 2}, "
                       "rtol 1e-8, solved one after another.",
        "tables": [{"title": "per system (mean)",
                    "columns": [["method", "method", "s"], ["matvecs", "matvecs", ".1f"],
                                ["ms", "ms", ".2f"], ["converged", "converged", "s"],
                                ["speedup", "vs GMRES(40)", ".2f"]],
                    "rows": rows}],
        "notes": [f"greedy nearest-neighbour sort of the coefficient fields: {sort_ms:.1f} ms.",
                  "bench/bench_krylov.py compares with scipy gmres, gcrotmk and splu."],
    }


# --------------------------------------------------------------------------------------------- rnn

def rnn_section(config: DemoConfig) -> dict:
    """fastpaper.nn.LSTM / GRU with torch's weights loaded vs torch.nn.LSTM / GRU, and the
    multi-head sLSTM (FlashRNN-style fused recurrence)."""
    import torch

    from .nn import GRU, LSTM, SLSTM

    b, t, h = (4, 64, 64) if config.small else (16, 256, 256)
    g = torch.Generator().manual_seed(config.seed)
    x = torch.randn(b, t, h, generator=g).to(config.device)
    rows = []
    with torch.no_grad():
        for ours, ref_cls, heads in ((LSTM, torch.nn.LSTM, 1), (GRU, torch.nn.GRU, 1),
                                     (SLSTM, None, 4)):
            torch.manual_seed(config.seed)
            mod = ours(h, h, num_heads=heads).to(config.device)
            row = {"module": f"{ours.__name__} {heads}x{h // heads}",
                   "fastpaper_ms": time_ms(lambda: mod(x), config.device)}
            if ref_cls is not None:
                ref = ref_cls(h, h, batch_first=True).to(config.device)
                mod.load_state_dict(ref.state_dict())
                row["max_abs_diff"] = float((mod(x)[0] - ref(x)[0]).abs().max())
                row["torch_ms"] = time_ms(lambda: ref(x), config.device)
            else:  # no torch counterpart: check step() against the full sequence instead
                st, ys = None, []
                for s in range(t):
                    y, st = mod.step(x[:, s], st)
                    ys.append(y)
                row["max_abs_diff"] = float((torch.stack(ys, 1) - mod(x)[0]).abs().max())
                row["torch_ms"] = float("nan")
            rows.append(row)
    return {
        "name": "rnn",
        "title": "FlashRNN (2024): fused multi-head LSTM / GRU / sLSTM recurrences",
        "description": (f"float32 x [{b}, {t}, {h}] -> hidden {h} on {config.device}, forward; "
                        "LSTM/GRU load torch.nn's weights (max |diff| against torch.nn); the "
                        "sLSTM row compares step() token by token with the full sequence."),
        "tables": [
            {"title": "forward: fastpaper.nn vs torch.nn",
             "columns": [
                 ["module", "module", "s"],
                 ["fastpaper_ms", "fastpaper ms", ".2f"],
                 ["torch_ms", "torch.nn ms", ".2f"],
                 ["max_abs_diff", "max |diff|", ".1e"],
             ],
             "rows": rows},
        ],
        "notes": ["bench/bench_rnn.py adds fwd+bwd, a plain PyTorch loop and the flashrnn "
                  "package (when importable)."],
    }


# --------------------------------------------------------------------------------------------- moe

def moe_section(config: DemoConfig) -> dict:
    """M³ViT: the expert-by-expert MoE MLP op vs the PyTorch expert loop, the model's FLOPs per
    task, and a short multi-task training run on procedural scenes."""
    import torch

    from . import moe
    from .models import M3ViT
    from .moe_data import make_scenes
    from .moe_train import evaluate, tiny_model, train

    n, d, e, k = (1201, 96, 16, 4) if config.small else (8 * 1201, 384, 16, 4)
    g = torch.Generator().manual_seed(config.seed)
    x = torch.randn(n, d, generator=g)
    scores, indices = torch.softmax(x @ torch.randn(d, e, generator=g) / d ** 0.5, -1).topk(k)
    W1 = torch.randn(e, d, d, generator=g) / d ** 0.5
    W2 = torch.randn(e, d, d, generator=g) / d ** 0.5
    b1, b2 = torch.zeros(e, d), torch.zeros(e, d)
    args = [t.to(config.device) for t in (x, scores, indices, W1, b1, W2, b2)]
    with torch.no_grad():
        y_op = moe.moe_mlp(*args, check_indices=False)
        y_loop = moe.moe_mlp_loop(*args)
        op_ms = time_ms(lambda: moe.moe_mlp(*args, check_indices=False), config.device)
        loop_ms = time_ms(lambda: moe.moe_mlp_loop(*args), config.device)
    layer_rows = [{"tokens": n, "width": d, "experts": f"{e}, top-{k}", "loop_ms": loop_ms,
                   "op_ms": op_ms, "speedup": loop_ms / op_ms,
                   "max_abs_diff": float((y_op - y_loop).abs().max())}]

    flops_rows = []
    vit = M3ViT(img_size=(512, 512))  # PASCAL-Context input, ViT-S/16, 5 tasks
    for t in vit.tasks:
        f = vit.flops(t)
        flops_rows.append({"task": t, "sparse_gflops": f["sparse"] / 1e9,
                           "dense_gflops": f["dense_all_tasks"] / 1e9,
                           "reduction": 100 * f["reduction"]})

    size, steps, scenes = ((32, 32), 15, 64) if config.small else ((64, 64), 150, 512)
    data = make_scenes(scenes, size, seed=config.seed)
    held = make_scenes(32, size, seed=config.seed + 1000)
    model = tiny_model(size, seed=config.seed, noisy_gating=True)
    before = evaluate(model, held)
    t0 = time.perf_counter()
    train(model, steps=steps, batch_size=8, lr=3e-3, data=data, seed=config.seed)
    train_s = time.perf_counter() - t0
    after = evaluate(model, held)
    train_rows = [{"task": t, "before": before[t], "after": after[t]} for t in model.tasks]
    return {
        "name": "moe",
        "title": "M³ViT (NeurIPS 2022): task-conditioned mixture-of-experts ViT",
        "description": (f"one MoE MLP layer, float32 x [{n}, {d}] on {config.device}: fastpaper.moe."
                        "moe_mlp (tokens counting-sorted by expert, one grouped GEMM per expert "
                        "weight, deterministic combine) vs a PyTorch loop over experts."),
        "tables": [
            {"title": "MoE MLP layer forward",
             "columns": [["tokens", "tokens", "d"], ["width", "D = H", "d"],
                         ["experts", "experts", "s"], ["loop_ms", "torch loop ms", ".2f"],
                         ["op_ms", "fastpaper ms", ".2f"], ["speedup", "speedup", ".2f"],
                         ["max_abs_diff", "max |diff|", ".1e"]],
             "rows": layer_rows},
            {"title": "M3ViT ViT-S/16, 512x512: GFLOPs of one task's sparse pathway vs the dense "
                      "all-tasks model",
             "columns": [["task", "task", "s"], ["sparse_gflops", "sparse GFLOPs", ".1f"],
                         ["dense_gflops", "dense all-tasks GFLOPs", ".1f"],
                         ["reduction", "reduction %", ".1f"]],
             "rows": flops_rows},
            {"title": f"multi-task training, {steps} steps ({train_s:.1f} s): held-out loss",
             "columns": [["task", "task", "s"], ["before", "before", ".3f"],
                         ["after", "after", ".3f"]],
             "rows": train_rows},
        ],
        "notes": [
            "Dense all-tasks baseline: every task's backbone pass with all 16 experts active per "
            "token plus all five decoders; the paper reports an 88 % reduction.",
            "Training: a small M3ViT (patch 8, width 64, 8 experts, top-2, noisy gating) on "
            "procedural scenes of random shapes with segmentation and depth targets; each step "
            "runs every task's own sparse pathway.",
        ],
    }


SECTIONS: list[tuple[str, Callable[[DemoConfig], dict]]] = [
    ("bfp", bfp_section),
    ("pararnn", pararnn_section),
    ("krylov", krylov_section),
    ("rnn", rnn_section),
    ("moe", moe_section),
]


def default_device() -> str:
    """"cuda" when torch sees a GPU and fastpaper was built with CUDA kernels, else "cpu"."""
    import torch

    from ._info import info

    return "cuda" if torch.cuda.is_available() and info()["cuda_built"] else "cpu"


def run(config: DemoConfig, sections: Optional[Sequence[str]] = None,
        progress: Optional[Callable[[str], None]] = None) -> list[dict]:
    """Run the named sections (all by default) in order; ``progress(name)`` is called before each."""
    known = dict(SECTIONS)
    names = list(known) if not sections else list(sections)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown demo section(s) {unknown}; available: {list(known)}")
    results = []
    for name in names:
        if progress is not None:
            progress(name)
        results.append(known[name](config))
    return results


def format_table(table: dict) -> str:
    """One table of a section (title, header, rows) as aligned text."""
    cols = table["columns"]
    cells = [[format(row[key], spec) for key, _, spec in cols] for row in table["rows"]]
    heads = [h for _, h, _ in cols]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]

    def line(values):
        return "  ".join(v.rjust(w) if spec not in ("s",) else v.ljust(w)
                         for v, w, (_, _, spec) in zip(values, widths, cols)).rstrip()

    out = [table["title"] + ":", line(heads), line(["-" * w for w in widths])]
    out.extend(line(c) for c in cells)
    return "\n".join(out)


def format_section(result: dict) -> str:
    """A section's title, description, tables and notes as text."""
    out = [f"== {result['title']} ==", result["description"]]
    for table in result["tables"]:
        out.extend(["", format_table(table)])
    if result.get("notes"):
        out.extend(["", *("* " + n for n in result["notes"])])
    return "\n".join(out)


def config_dict(config: DemoConfig) -> dict:
    return asdict(config)
