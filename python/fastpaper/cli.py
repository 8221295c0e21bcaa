"""The ``fastpaper`` command: ``info`` (build and machine), ``demo`` (each area's main job),
``krylov generate`` (PDE data generation with recycling), ``moe train`` (M3ViT on procedural
scenes) and ``hls estimate`` / ``hls bundle`` (the M3ViT MoE FPGA design)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

_SMALL_ENV = "FASTPAPER_DEMO_SMALL"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "none"
    return str(value)


def format_info(info: dict) -> str:
    """``fastpaper.info()`` as aligned ``key: value`` lines, one line per CUDA device."""
    width = max(len(k) for k in info)
    lines = []
    for key, value in info.items():
        if key == "cuda_devices" and value:
            lines.append(f"{key:<{width}} :")
            for d in value:
                lines.append(f"  [{d.get('index')}] {d.get('name')} (compute capability "
                             f"{d.get('compute_capability')})")
        else:
            lines.append(f"{key:<{width}} : {_text(value)}")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from ._info import info

    data = info()
    print(json.dumps(data, indent=2) if args.json else format_info(data))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("fastpaper demo needs PyTorch: pip install 'fastpaper[torch]'", file=sys.stderr)
        return 1
    from . import demo
    from ._info import info

    small = args.small or os.environ.get(_SMALL_ENV, "") not in ("", "0")
    device = demo.default_device() if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("fastpaper demo: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    config = demo.DemoConfig(device=device, small=small, seed=args.seed)
    print(f"fastpaper {info()['version']} demo on {device}"
          + (" (small sizes)" if small else ""), flush=True)
    results = []
    for name in args.section or [n for n, _ in demo.SECTIONS]:
        result = demo.run(config, [name])[0]
        print()
        print(demo.format_section(result), flush=True)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": demo.config_dict(config), "info": info(), "sections": results},
                      f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


def _cmd_krylov_generate(args: argparse.Namespace) -> int:
    from .krylov_generate import generate

    try:
        summary = generate(args.family, args.grid, args.count, args.out, seed=args.seed,
                           sort=args.sort, m=args.m, k=args.k, rtol=args.rtol,
                           precond=None if args.precond == "none" else args.precond,
                           maxiter=args.maxiter, chunk_size=args.chunk_size,
                           scheduler=args.scheduler, progress=not args.no_progress,
                           stop_after=args.stop_after, precision=args.precision)
    except ValueError as e:
        print(f"fastpaper krylov generate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; finished samples are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


def _add_krylov(sub) -> None:
    p = sub.add_parser("krylov", help="GCRO-DR recycling: PDE data generation",
                       description="Krylov subspace recycling (SKR) tools.")
    ksub = p.add_subparsers(dest="krylov_command", metavar="VERB", required=True)
    g = ksub.add_parser("generate", help="sample, sort and solve a PDE family into a Zarr store",
                        description="Sample COUNT systems of a PDE family, sort them, solve them "
                                    "in sequence with GCRO-DR recycling and write parameters, "
                                    "solutions and statistics to a Zarr store. Resumable: rerun "
                                    "the same command after an interruption.")
    g.add_argument("--family", choices=("darcy", "poisson", "convdiff", "helmholtz"), default="darcy")
    g.add_argument("--grid", type=int, default=64, help="nodes per side, boundary included")
    g.add_argument("--count", type=int, default=100)
    g.add_argument("--out", required=True, help="Zarr store directory (e.g. data.zarr)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sort", choices=("auto", "greedy", "fft-gray", "none"), default="auto")
    g.add_argument("--m", type=int, default=40, help="GCRO-DR restart length")
    g.add_argument("--k", type=int, default=20, help="recycled vectors")
    g.add_argument("--rtol", type=float, default=1e-8)
    g.add_argument("--precond", choices=("none", "jacobi", "ilu0"), default="ilu0")
    g.add_argument("--maxiter", type=int, default=None)
    g.add_argument("--precision", choices=("double", "mixed", "single"), default="mixed",
                   help="mixed (default): double systems and solutions, each solved to rtol on "
                        "its double residual with a single-precision Krylov basis; double: all in "
                        "double; single: float32/complex64 systems and solutions")
    g.add_argument("--chunk-size", type=int, default=None,
                   help="systems per recycling chunk of the sorted sequence (default: all)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the chunks on this Dask scheduler (workers must share the filesystem)")
    g.add_argument("--stop-after", type=int, default=None,
                   help="solve at most this many systems in this run")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_krylov_generate)


def _cmd_moe_train(args: argparse.Namespace) -> int:
    from .models import M3ViT  # noqa: F401  (imports torch)
    from .moe_data import TASK_CHANNELS, make_scenes
    from .moe_train import evaluate, tiny_model, train

    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASK_CHANNELS]
    if unknown or args.size % 8 or args.size < 8:
        print(f"fastpaper moe train: tasks must be among {list(TASK_CHANNELS)} and --size a "
              f"multiple of 8, got {tasks} and {args.size}", file=sys.stderr)
        return 2
    size = (args.size, args.size)
    data = make_scenes(args.scenes, size, seed=args.seed)
    held = make_scenes(64, size, seed=args.seed + 1)
    model = tiny_model(size, seed=args.seed, tasks=tasks, router=args.router, noisy_gating=True)
    before = evaluate(model, held)
    history = train(model, steps=args.steps, batch_size=args.batch, lr=args.lr, data=data,
                    seed=args.seed, progress=not args.no_progress)
    after = evaluate(model, held)
    if args.out:
        model.save_checkpoint(args.out)
    f = model.flops(tasks[0])
    print(json.dumps({"steps": args.steps, "held_out_before": before, "held_out_after": after,
                      "last_step": history[-1] if history else None,
                      "flops_reduction": f["reduction"], "checkpoint": args.out}))
    return 0


def _add_moe(sub) -> None:
    p = sub.add_parser("moe", help="M3ViT mixture-of-experts: training on procedural scenes",
                       description="M³ViT task-conditioned mixture-of-experts tools.")
    msub = p.add_subparsers(dest="moe_command", metavar="VERB", required=True)
    g = msub.add_parser("train", help="train a small M3ViT on procedural multi-task scenes",
                        description="Train a small M3ViT (every task's own sparse pathway per "
                                    "step, plus the load-balancing loss) on generated scenes of "
                                    "random shapes, print held-out losses as JSON and optionally "
                                    "save a checkpoint (M3ViT.from_checkpoint reads it).")
    g.add_argument("--steps", type=int, default=200)
    g.add_argument("--size", type=int, default=64, help="image side, a multiple of 8")
    g.add_argument("--scenes", type=int, default=512)
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--tasks", default="semseg,depth")
    g.add_argument("--router", choices=("multi-gate", "task-embedding"), default="multi-gate")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="checkpoint path")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_moe_train)


def _cmd_hls_estimate(args: argparse.Namespace) -> int:
    from . import moe_hls

    tiles = dict(tt=args.tt, ti=args.ti, clock_mhz=args.clock_mhz, layers=args.layers)
    try:
        csim = None
        if args.csim:
            with open(args.csim) as f:
                csim = json.load(f)
            est = moe_hls.estimate_for_csim(csim, clock_mhz=args.clock_mhz, layers=args.layers)
        else:
            est = moe_hls.estimate(n_tokens=args.tokens, dim=args.dim, hidden=args.hidden,
                                   experts=args.experts, k=args.k, **tiles)
    except (ValueError, OSError, KeyError) as e:
        print(f"fastpaper hls estimate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(est, indent=2) if args.json else moe_hls.format_estimate(est, csim))
    return 0


def _cmd_hls_bundle(args: argparse.Namespace) -> int:
    from . import moe_hls

    try:
        manifest = moe_hls.bundle(args.model, args.out, layers=args.layer, n_tokens=args.tokens,
                                  max_tokens=args.max_tokens, tasks=args.task, seed=args.seed)
    except (ValueError, OSError, TypeError) as e:
        print(f"fastpaper hls bundle: {e}", file=sys.stderr)
        return 2
    hw = manifest["hardware"]
    print(f"wrote {args.out}: {len(manifest['layers'])} MoE layers (D={hw['D']} H={hw['H']} "
          f"E={hw['E']} k={hw['K']}, MAX_N={hw['MAX_N']}), {len(manifest['files'])} files; "
          f"next: cd {args.out} && vitis_hls -f run_hls.tcl")
    return 0


def _add_hls(sub) -> None:
    p = sub.add_parser("hls", help="M3ViT MoE FPGA design: estimate, Vitis bundle",
                       description="The M3ViT MoE layer as a Vitis HLS design for the ZCU104.")
    hsub = p.add_subparsers(dest="hls_command", metavar="VERB", required=True)
    e = hsub.add_parser("estimate", help="cycles, DRAM traffic and resources per layer and image",
                        description="Cycle and resource model of the HLS design (loop trip counts "
                                    "and initiation intervals) for the expert-by-expert design "
                                    "and the token-by-token baseline; with --csim, at a "
                                    "C-simulation's sizes, next to its measured traffic.")
    e.add_argument("--tokens", type=int, default=1201, help="tokens per image (default 1201)")
    e.add_argument("--dim", type=int, default=384)
    e.add_argument("--hidden", type=int, default=384)
    e.add_argument("--experts", type=int, default=16)
    e.add_argument("--k", type=int, default=4)
    e.add_argument("--layers", type=int, default=6, help="MoE layers per image")
    e.add_argument("--clock-mhz", type=float, default=200.0)
    e.add_argument("--tt", type=int, default=8, help="tokens per MAC-array pass")
    e.add_argument("--ti", type=int, default=8, help="input lanes of the MAC array")
    e.add_argument("--csim", metavar="RESULT.json", help="a testbench result (csim_result.json)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=_cmd_hls_estimate)
    b = hsub.add_parser("bundle", help="sources, tcl, weights and test vectors for Vitis HLS",
                        description="Write the HLS sources, run_hls.tcl, vivado_bd.tcl, the "
                                    "model's MoE layers and test vectors, and a manifest into "
                                    "OUT, ready for `vitis_hls -f run_hls.tcl`.")
    b.add_argument("--model", required=True, metavar="CKPT", help="M3ViT checkpoint")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--tokens", type=int, default=64, help="tokens in the test vectors")
    b.add_argument("--max-tokens", type=int, default=None,
                   help="MAX_N of the design (default: the model's tokens per image)")
    b.add_argument("--layer", type=int, action="append", help="MoE layer (repeatable; default all)")
    b.add_argument("--task", type=int, action="append", help="task id (repeatable; default all)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_hls_bundle)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastpaper",
        description="Fast C++/CUDA kernels for five recent papers, callable from PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="version, CUDA build and visible GPUs",
                       description="Print fastpaper.info(): version, CUDA build, visible GPUs.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    # Section names are listed statically so that `fastpaper --help` does not import torch.
    sections = ["bfp", "pararnn", "krylov", "rnn", "moe"]  # = demo.SECTIONS (tests/test_cli.py)
    p = sub.add_parser("demo", help="run each area's main job on built-in data",
                       description="Run each area's main job on built-in data and compare with "
                                   "a plain-PyTorch baseline (error, size, throughput).")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available and built, else CPU")
    p.add_argument("--small", action="store_true",
                   help=f"small sizes, a few seconds in total (also: {_SMALL_ENV}=1)")
    p.add_argument("--section", action="append", choices=sections,
                   help="run only this section (repeatable); default: all")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in data")
    p.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    p.set_defaults(func=_cmd_demo)
    _add_krylov(sub)
    _add_moe(sub)
    _add_hls(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``fastpaper`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:
        # `fastpaper info | head` closes stdout early: exit quietly, like other Unix tools, and
        # keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
