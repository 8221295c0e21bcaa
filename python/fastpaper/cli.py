"""The ``fastpaper`` command: ``info`` (build and machine) and ``demo`` (each area's main job)."""

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
    sections = ["bfp"]
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
