"""One GAN training step on CPU, as shipped against the plain DCGAN layout, same run.

A step is what `train_gan` does: one discriminator update on a real and a fake batch, then
`generator_steps` generator updates. Two variants of the same networks and config:

- plain: element-wise `Dropout` in the discriminator, tensors in the default (NCHW) layout;
- shipped: spatial `Dropout2d` (one draw per feature map) and channels-last tensors.

    python benchmarks/bench_gan_step.py [--config configs/dcgan.json] [--batch 16] [--threads 1] [--repeats 7] [--json outputs/benchmarks/gan_step.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from xray_generator.io import atomic_write_text  # noqa: E402
from xray_generator.models.gan import build_gan_discriminator, build_gan_generator  # noqa: E402


def build_pair(model_config: dict, shipped: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    generator, discriminator = build_gan_generator(model_config), build_gan_discriminator(model_config)
    if not shipped:
        for index, layer in enumerate(discriminator.features):
            if isinstance(layer, nn.Dropout2d):
                discriminator.features[index] = nn.Dropout(layer.p)
        return generator, discriminator
    return generator.to(memory_format=torch.channels_last), discriminator.to(memory_format=torch.channels_last)


def step_seconds(model_config: dict, shipped: bool, batch: int, generator_steps: int, repeats: int) -> list[float]:
    generator, discriminator = build_pair(model_config, shipped)
    opt_g, opt_d = torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())
    size, z_dim = model_config["image_size"], model_config["z_dim"]
    n_classes = len(model_config.get("classes") or [])
    labels = torch.randint(0, n_classes, (batch,)) if n_classes else None
    real = torch.rand(batch, 1, size, size) * 2 - 1
    if shipped:
        real = real.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(repeats + 1):  # the first step warms oneDNN's kernel cache and is dropped
        start = time.perf_counter()
        with torch.no_grad():
            fake = generator(torch.randn(batch, z_dim), labels)
        loss_d = nn.functional.softplus(-discriminator(real, labels)).mean() + nn.functional.softplus(discriminator(fake, labels)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        for _ in range(generator_steps):
            loss_g = nn.functional.softplus(-discriminator(generator(torch.randn(batch, z_dim), labels), labels)).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/dcgan.json")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = json.loads(Path(args.config).read_text())
    batch = args.batch or config["train"]["batch_size"]
    generator_steps = config["train"].get("generator_steps", 1)
    plain = statistics.median(step_seconds(config["model"], False, batch, generator_steps, args.repeats))
    shipped = statistics.median(step_seconds(config["model"], True, batch, generator_steps, args.repeats))
    results = {
        "config": args.config, "batch": batch, "generator_steps": generator_steps, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "plain_dropout_nchw_median_s": round(plain, 4), "shipped_dropout2d_channels_last_median_s": round(shipped, 4),
        "speedup": round(plain / shipped, 2),
    }
    print(f"{args.config}, batch {batch}, {generator_steps} generator steps, {args.threads} thread(s), median of {args.repeats}:")
    print(f"  plain (Dropout, NCHW)             {plain:.3f} s/step")
    print(f"  shipped (Dropout2d, channels-last) {shipped:.3f} s/step ({plain / shipped:.2f}x faster)")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
