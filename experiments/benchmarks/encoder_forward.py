"""Encoder throughput: patches per second for one forward pass (preprocess + encode) of uint8 patches.

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/benchmarks/encoder_forward.py
    HF_HUB_OFFLINE=1 .venv/bin/python experiments/benchmarks/encoder_forward.py --encoders handcrafted --device cuda

Real-looking input matters little for speed, so patches are uniform noise; the batch sits in host
memory as a data loader would deliver it (the transfer to the device is part of the timing).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time

import torch

from alkit.embeddings.encoders import get_encoder


def bench(spec: str, device: str, batch: int, size: int, repeats: int) -> tuple[float, float]:
    encoder = get_encoder(spec, device=device)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        encoder(images)  # warm-up (allocations, kernel selection)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            encoder(images)
            sync()
            times.append(time.perf_counter() - start)
    best, median = min(times), sorted(times)[len(times) // 2]
    return batch / median, batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["handcrafted", "resnet18"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="patch side in px (default 256)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}, batch {args.batch} x {args.size}px uint8")
    for spec in args.encoders:
        median, best = bench(spec, args.device, args.batch, args.size, args.repeats)
        print(f"{spec:<24} {median:8.1f} patches/s (median of {args.repeats}; best {best:.1f})")


if __name__ == "__main__":
    main()
