"""Train a small M³ViT on procedural multi-task scenes (no downloads) and save a checkpoint.

    python examples/moe_train.py --steps 300 --size 64 --out m3vit_shapes.pt

Each step runs every task's own sparse pathway (its router picks k experts per token and only
its decoder runs) and adds the MoE load-balancing loss. Prints held-out losses before and after,
and the FLOPs of one task's pathway against the dense all-tasks model.
"""

from __future__ import annotations

import argparse

from fastpaper.models import M3ViT
from fastpaper.moe_data import make_scenes
from fastpaper.moe_train import evaluate, tiny_model, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=64, help="image height = width (multiple of 8)")
    p.add_argument("--scenes", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tasks", default="semseg,depth,normals,edges,saliency")
    p.add_argument("--router", choices=("multi-gate", "task-embedding"), default="multi-gate")
    p.add_argument("--out", default=None, help="checkpoint path (M3ViT.save_checkpoint)")
    args = p.parse_args()
    size = (args.size, args.size)
    data = make_scenes(args.scenes, size, seed=0)
    held = make_scenes(64, size, seed=1)
    model = tiny_model(size, tasks=args.tasks.split(","), router=args.router, noisy_gating=True)
    before = evaluate(model, held)
    history = train(model, steps=args.steps, batch_size=args.batch, lr=args.lr, data=data,
                    progress=True)
    after = evaluate(model, held)
    print(f"{'task':10s} {'before':>8s} {'after':>8s}")
    for t in model.tasks:
        print(f"{t:10s} {before[t]:8.4f} {after[t]:8.4f}")
    print(f"last step: total {history[-1]['total']:.4f}, load-balancing {history[-1]['aux']:.4f}")
    f = model.flops(model.tasks[0])
    print(f"FLOPs/image, {f['task']}: sparse pathway {f['sparse'] / 1e6:.1f} M vs dense all-tasks "
          f"{f['dense_all_tasks'] / 1e6:.1f} M ({100 * f['reduction']:.1f} % fewer)")
    if args.out:
        model.save_checkpoint(args.out)
        again = M3ViT.from_checkpoint(args.out)
        print(f"saved {args.out} ({sum(p.numel() for p in again.parameters())} parameters)")


if __name__ == "__main__":
    main()
