"""The PyTorch way of training SSKT on CIFAR: the authors' 2D train step written as a PyTorch user would.

What it measures: seconds per training step (and images per second) of a plain eager PyTorch
loop on the CPU, for the rows that `benchmarks/throughput.py` measures for sskt_tf, so that the two
frameworks can be compared on the same machine, batch and thread count. It also reports the
process's peak resident memory.

What it mirrors (the method's description; no code is taken from any repository, and torchvision
is not needed: the networks are written here in plain `torch.nn`):
  target   CIFAR ResNet-20 (He et al., CVPR 2016, sec. 4.2): a 3x3 stem conv, 3 stages of 3 basic
           blocks with widths 16/32/64, 3x3 convs, BatchNorm, ReLU, the parameter-free "option A"
           shortcut (strided identity, zero-padded channels), global average pooling, a linear main
           head to 10 classes (0.27M parameters), and one linear auxiliary head per source on the
           pooled 64-d features, to that source's class count.
  sources  frozen ImageNet-style ResNet-50s (bottleneck blocks [3, 4, 6, 3], widths 64..2048,
           stride-2 7x7 stem + max pool, stride on the 3x3 conv, BatchNorm, linear 2048 -> classes;
           25,557,032 parameters with 1000 classes). Random weights: the cost is the same. They run
           in eval mode under `torch.no_grad()` on the batch upsampled x7/3 (32 -> 74 px, bilinear).
  loss     CE(z, y) + alpha * sum_k T^2 * mean_b(-sum_c softmax(s_k / T)_c log_softmax(a_k / T)_c),
           alpha 0.1, T 3 (Hong et al., WACV 2022, eq. 2; `sskt_tf.losses.soft_cross_entropy`).
  update   SGD(lr 0.1, momentum 0.9, weight_decay 5e-4) over the target's parameters (main and
           auxiliary heads included) only.
  layout   torch's default NCHW, float32, as a typical user would run it.

Rows (--row):
  scratch         train step of the target alone (no auxiliary heads, no sources)
  sskt            train step with one ResNet-50 source of 1000 classes
  sskt2           train step with two ResNet-50 sources of 1000 and 365 classes (the paper's I + P)
  source_forward  one ResNet-50 forward (upsampling included) under no_grad, eval mode

One fixed random batch (seeded, 32x32, normalised with the ImageNet mean/std) is held in memory, so
the figures measure compute, not input. `--warmup` untimed steps come first; then `--repeats`
timed blocks of `--steps` steps each, one ms-per-step value per block.

`benchmarks/throughput.py` runs this script as a subprocess, once per row, with its own
--batch_size and --threads, so that both frameworks see the same batch and thread count, and reads
the one JSON line it prints on stdout:

    python benchmarks/torch_reference.py --row=sskt --batch_size=128 --threads=2 --steps=10 --warmup=3 --repeats=3
    -> {"row": "sskt", "framework": "torch", "torch_version": ..., "threads": 2, "batch_size": 128,
        "ms_per_step": [...], "median_ms": ..., "images_per_second": ..., "peak_rss_mib": ...}

The loss check (no timing) evaluates the training step's loss function on stored logits, so that a
test can compare it with sskt_tf's losses:

    python benchmarks/torch_reference.py --loss_check=logits.npz
    -> {"total": ..., "target": ..., "aux": ...}

The .npz holds `logits` [B, C] (main head), `labels` [B] (class indices), `source_logits` and
`aux_logits`, each [B, K] for one source or [S, B, K] for S sources. "aux" is the unweighted sum over
sources of T^2 * soft cross-entropy (sskt_tf logs each source's term as `aux_loss_<source>`);
"total" is target + alpha * aux.

Nothing but the one JSON line goes to stdout; warnings go to stderr.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROWS = ("scratch", "sskt", "sskt2", "source_forward")
# Class counts of the sources of each row: ImageNet (1000) and Places365 (365).
SOURCE_CLASSES = {"scratch": (), "sskt": (1000,), "sskt2": (1000, 365), "source_forward": (1000,)}
IMAGE_SIZE = 32
# The sources see the CIFAR image upsampled x7/3, as in the paper's CIFAR setting: 32 -> 74 px.
SOURCE_SIZE = 74
TARGET_CLASSES = 10
ALPHA = 0.1
TEMPERATURE = 3.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- Target: CIFAR ResNet-20 -------------------------------------------------------------------------


class OptionAShortcut(nn.Module):
    """He et al.'s parameter-free shortcut: strided identity, channels zero-padded (split evenly)."""

    def __init__(self, stride, out_channels):
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        before = extra // 2
        return F.pad(x, (0, 0, 0, 0, before, extra - before))


class BasicBlock(nn.Module):
    def __init__(self, in_channels, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = OptionAShortcut(stride, width) if stride != 1 or in_channels != width else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with a main head and one auxiliary head per source.

    forward: float [B, 3, H, W] -> (main logits [B, classes], list of aux logits [B, K_k]).
    """

    def __init__(self, depth=20, num_classes=TARGET_CLASSES, aux_classes=()):
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, channels = [], 16
        for s, width in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(BasicBlock(channels, width, 2 if s > 0 and b == 0 else 1))
                channels = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        self.aux_heads = nn.ModuleList(nn.Linear(64, k) for k in aux_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(features), [head(features) for head in self.aux_heads]


# --- Sources: ImageNet ResNet-50 ---------------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, width, stride):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # The stride sits on the 3x3 conv (the "v1.5" ResNet that torchvision ships).
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ImageNet ResNet-50: float [B, 3, H, W] -> logits [B, num_classes]."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, channels = [], 64
        for s, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            for b in range(blocks):
                stages.append(Bottleneck(channels, width, 2 if s > 0 and b == 0 else 1))
                channels = width * Bottleneck.expansion
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def frozen_source(num_classes):
    source = ResNet50(num_classes).eval()
    source.requires_grad_(False)
    return source


# --- Loss and step -----------------------------------------------------------------------------------


def soft_cross_entropy(source_logits, aux_logits, temperature):
    """T^2 * mean_b(-sum_c softmax(s / T)_c * log_softmax(a / T)_c): the soft-label term of one source."""
    soft_labels = F.softmax(source_logits / temperature, dim=-1)
    log_q = F.log_softmax(aux_logits / temperature, dim=-1)
    return temperature**2 * (-(soft_labels * log_q).sum(dim=-1)).mean()


def sskt_loss(logits, labels, source_logits, aux_logits, alpha=ALPHA, temperature=TEMPERATURE):
    """Returns (total, target, aux): target = CE(z, y); aux = sum over sources; total = target + alpha * aux."""
    target = F.cross_entropy(logits, labels)
    aux = logits.new_zeros(())
    for s, a in zip(source_logits, aux_logits):
        aux = aux + soft_cross_entropy(s, a, temperature)
    return target + alpha * aux, target, aux


def upsample(images):
    return F.interpolate(images, size=SOURCE_SIZE, mode="bilinear", align_corners=False)


def make_step(row):
    """The model(s) of `row` and a function running one step on (images, labels)."""
    sources = [frozen_source(k) for k in SOURCE_CLASSES[row]]
    if row == "source_forward":

        def forward(images, labels):
            with torch.no_grad():
                return sources[0](upsample(images))

        return forward

    target = CifarResNet(20, TARGET_CLASSES, aux_classes=SOURCE_CLASSES[row]).train()
    optimizer = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def train_step(images, labels):
        source_logits = []
        if sources:
            with torch.no_grad():
                big = upsample(images)
                source_logits = [source(big) for source in sources]
        logits, aux_logits = target(images)
        total, _, _ = sskt_loss(logits, labels, source_logits, aux_logits)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total.detach()

    return train_step


def fixed_batch(batch_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    labels = torch.randint(0, TARGET_CLASSES, (batch_size,), generator=generator, dtype=torch.int64)
    return (images - mean) / std, labels


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(args):
    torch.manual_seed(0)
    images, labels = fixed_batch(args.batch_size)
    step = make_step(args.row)
    for _ in range(args.warmup):
        step(images, labels)
    ms_per_step = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step(images, labels)
        ms_per_step.append((time.perf_counter() - start) / args.steps * 1e3)
    median = statistics.median(ms_per_step)
    return {
        "row": args.row,
        "framework": "torch",
        "torch_version": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "ms_per_step": ms_per_step,
        "median_ms": median,
        "images_per_second": args.batch_size / (median / 1e3),
        "peak_rss_mib": peak_rss_mib(),
    }


def loss_check(path):
    with np.load(path) as f:
        arrays = {k: f[k] for k in ("logits", "labels", "source_logits", "aux_logits")}

    def per_source(a):
        a = torch.from_numpy(np.asarray(a, np.float32))
        return [a] if a.dim() == 2 else list(a)

    total, target, aux = sskt_loss(
        torch.from_numpy(arrays["logits"].astype(np.float32)),
        torch.from_numpy(arrays["labels"].astype(np.int64)),
        per_source(arrays["source_logits"]),
        per_source(arrays["aux_logits"]),
    )
    return {"total": total.item(), "target": target.item(), "aux": aux.item()}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--row", choices=ROWS, default="sskt", help="What to time (see the module docstring).")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (intra-op threads).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per block.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before the first block.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed blocks; one ms/step value each.")
    parser.add_argument("--loss_check", metavar="NPZ", help="Print the loss of stored logits instead of timing.")
    args = parser.parse_args(argv)
    for name, low in (("batch_size", 1), ("threads", 1), ("steps", 1), ("warmup", 0), ("repeats", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be >= {low}. Received: {getattr(args, name)}.")
    return args


def main(argv=None):
    args = parse_args(argv)
    # Before any parallel work: torch refuses to change the inter-op pool once it has started.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    result = loss_check(args.loss_check) if args.loss_check else benchmark(args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
