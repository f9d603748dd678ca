"""Benchmark: class fidelity of a diffusion prior, read by a ConvNet-3 trained on real labels.

    python bench/prior_quality.py --model dsco_hub/resources/prior_fashion_mnist \
        --source ../shared/data/fashion_mnist --guidance 1 2 3

A ConvNet-3 (the evaluation student) is trained on the real training split with hard labels and
tested on the real test split; it then labels `--per-class` samples of each class drawn from the
prior (DDIM, `--steps`, seeds (0, class, slot)) at each guidance scale. The figure is the fraction
of samples it labels as the class they were conditioned on, with each class's most frequent wrong
label. `--scheduler KEY=VALUE` overrides the prior's DDIM scheduler config for the whole run (e.g.
`clip_sample=false`, `timestep_spacing=trailing`). Writes `--out` (default `bench/results/prior_quality.md`)
and quotes it in the command it writes, so that command writes the same file again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file

from dsco_hub.config import SamplerConfig, SourceConfig, derive_seed
from dsco_hub.data import decode_images, load_source, load_test_source, to_model_range, to_uint8
from dsco_hub.evaluate import ConvNet3
from dsco_hub.models import load_prior, map_classes, sample


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, seed: int):
    """ConvNet-3 on real images `(N, C, H, W)` uint8: SGD (lr 0.01, momentum 0.9, wd 5e-4), batch 256,
    learning rate divided by 10 after half of the epochs (the evaluation protocol's schedule)."""
    torch.manual_seed(seed)
    model = ConvNet3(images.shape[1], num_classes, images.shape[-1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    x_all = to_model_range(images)
    for epoch in range(epochs):
        if epoch == epochs // 2:
            for group in opt.param_groups:
                group["lr"] = 0.001
        order = torch.randperm(len(x_all), generator=g)
        for start in range(0, len(order), 256):
            idx = order[start : start + 256]
            loss = F.cross_entropy(model(x_all[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model, images: torch.Tensor) -> torch.Tensor:
    """Predicted classes of `(N, C, H, W)` float images in [-1, 1]."""
    return torch.cat([model(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])


def cached_classifier(args, source, test, channels: int, size: int):
    """The fidelity classifier, its real test accuracy (0..1) and its training seconds, from the cache or trained."""
    cache = Path(args.classifier_cache)
    meta_path = cache / "classifier.json"
    key = {"source": str(Path(args.source).resolve()), "epochs": args.epochs, "seed": 0}
    model = ConvNet3(channels, source.num_classes, size)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["key"] == key:
            model.load_state_dict(load_file(cache / "model.safetensors"))
            return model.eval(), meta["real_accuracy"], meta["seconds"]
    started = time.time()
    train_images = decode_images(source, range(len(source.labels)), channels, size)
    model = train_classifier(train_images, torch.from_numpy(source.labels), source.num_classes, args.epochs, 0)
    test_images = to_model_range(decode_images(test, range(len(test.labels)), channels, size))
    real_acc = (predict(model, test_images) == torch.from_numpy(test.labels)).float().mean().item()
    seconds = time.time() - started
    cache.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), cache / "model.safetensors")
    meta_path.write_text(json.dumps({"key": key, "real_accuracy": real_acc, "seconds": seconds}, indent=2) + "\n")
    print(f"classifier: {100 * real_acc:.1f} % on the real test split ({seconds:.0f} s)")
    return model, real_acc, seconds


def scheduler_overrides(parser: argparse.ArgumentParser, args) -> dict:
    """`--scheduler KEY=VALUE ...` as a dict: JSON values (`false`, `1.5`), other values as strings (`trailing`)."""
    overrides = {}
    for item in args.scheduler:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--scheduler {item!r} is not KEY=VALUE; e.g. --scheduler clip_sample=false")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dsco_hub/resources/prior_fashion_mnist")
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--classifier-only", action="store_true", help="train and cache the classifier, then stop")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--classifier-cache",
        default="runs/fidelity-convnet3",
        help="folder holding the trained classifier (safetensors + its real test accuracy); reused when it "
        "matches --source and --epochs",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. the cores)")
    parser.add_argument("--out", default="bench/results/prior_quality.md")
    parser.add_argument(
        "--scheduler", nargs="*", default=[], metavar="KEY=VALUE", help="DDIM scheduler config overrides (JSON values)"
    )
    args = parser.parse_args()
    overrides = scheduler_overrides(parser, args)  # before any work
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    source = load_source(SourceConfig(source=args.source))
    test = load_test_source(SourceConfig(source=args.source), source.class_names)
    channels, size = source.image_shape[0], source.image_shape[1]
    classifier, real_acc, classifier_seconds = cached_classifier(args, source, test, channels, size)

    if args.classifier_only:
        return
    prior = load_prior(args.model)
    prior.scheduler = DDIMScheduler.from_config({**prior.scheduler.config, **overrides})
    class_ids = map_classes(source.class_names, prior.id2label)
    labels = [k for k in range(source.num_classes) for _ in range(args.per_class)]
    seeds = [derive_seed(0, k, j) for k in range(source.num_classes) for j in range(args.per_class)]
    rows = []
    for w in args.guidance:
        t0 = time.time()
        images = sample(
            prior,
            [class_ids[k] for k in labels],
            seeds,
            SamplerConfig(steps=args.steps, guidance_scale=w, batch_size=250),
        )
        seconds = time.time() - t0
        images = to_model_range(to_uint8(images))  # what the writer stores: 8-bit pixels
        if images.shape[1] != channels:
            images = images.mean(1, keepdim=True) if channels == 1 else images.expand(-1, 3, -1, -1)
        pred = predict(classifier, images)
        agree = (pred == torch.tensor(labels)).float()
        per_class = agree.view(source.num_classes, args.per_class).mean(1)
        k = source.num_classes
        confusion = torch.bincount(torch.tensor(labels) * k + pred, minlength=k * k).view(k, k)  # (true, predicted)
        rows.append((w, agree.mean().item(), per_class.numpy(), seconds, confusion))
        print(f"guidance {w}: {100 * agree.mean():.1f} % ({seconds:.0f} s)")

    lines = [
        f"# Prior class fidelity: `{args.model}`",
        "",
        f"Command: `python bench/prior_quality.py --model {args.model} --source {args.source} "
        f"--guidance {' '.join(map(str, args.guidance))} --steps {args.steps} --per-class {args.per_class} "
        f"--epochs {args.epochs}"
        + (f" --threads {args.threads}" if args.threads is not None else "")
        + (f" --scheduler {' '.join(args.scheduler)}" if args.scheduler else "")
        + f" --out {args.out}`",
        "",
        f"Classifier: ConvNet-3 trained {args.epochs} epochs on the {len(source.labels)} real training images, "
        f"{100 * real_acc:.1f} % on the {len(test.labels)} real test images ({classifier_seconds:.0f} s).",
        f"Samples: {args.per_class} per class, DDIM {args.steps} steps, seeds (0, class, slot).",
        "",
        "| guidance scale | samples labelled as their class (%) | worst class | sampling time (s) |",
        "|---|---|---|---|",
    ]
    for w, acc, per_class, seconds, _ in rows:
        worst = int(np.argmin(per_class))
        lines.append(
            f"| {w} | {100 * acc:.1f} | {source.class_names[worst]} ({100 * per_class[worst]:.0f} %) | {seconds:.0f} |"
        )
    lines += [
        "",
        "Per class: % labelled as the class, then the most frequent wrong label (its %).",
        "",
        "| class | " + " | ".join(f"guidance {w}" for w, *_ in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for k, name in enumerate(source.class_names):
        cells = []
        for _, _, per_class, _, confusion in rows:
            wrong = confusion[k].clone()
            wrong[k] = -1
            other = int(wrong.argmax())
            share = 100 * confusion[k, other].item() / args.per_class
            mistaken = f" (→ {source.class_names[other]} {share:.0f})" if share else ""
            cells.append(f"{100 * per_class[k]:.0f}{mistaken}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
