"""PyTorch twin of `lade_tf.models.resnet32(variant="bbn")`, for benchmarks/throughput.py.

The LADE authors' (BBN) CIFAR ResNet-32, written to match the Keras model layer by layer:
pixel normalisation (x - 127.5) / 127.5 inside the model; a 3x3 16-channel stem conv (no bias),
batch norm, ReLU; basic blocks of 16 (5), 32 (5, the first with stride 2) and 64 (4, the first
with stride 2) channels with parameter-free option-A shortcuts (subsample, zero-pad the channels
evenly before and after); two parallel 64-channel blocks (BBN's two branches) concatenated to a
128-d feature; global average pooling; a dense head. Kaiming-normal (fan_in, gain sqrt(2),
untruncated) convolutions, Glorot-uniform head with zero bias, batch norm momentum 0.1 (Keras 0.9)
and epsilon 1e-5. Only difference: a stride-2 "same" conv pads (0, 1) in Keras and (1, 1) here,
which shifts the sampling grid by one pixel but costs the same.

Run with the torch environment (.venv-torch, `scripts/setup.sh --torch`); it needs only torch:

    .venv-torch/bin/python benchmarks/torch_resnet32.py --count-params
    .venv-torch/bin/python benchmarks/torch_resnet32.py --serve      # JSON-lines worker

`--serve` first reports its thread count and `parameter_counts` in one JSON line, then reads one
command per line on stdin ("train <steps> <warmup>", "infer <steps> <warmup>", "quit") and
answers each with one JSON line on stdout: images/s of SGD training
(momentum 0.9, coupled weight decay 5e-4, cross-entropy, batch `--batch`, `--classes` classes) on
synthetic in-memory batches, or of inference (eval mode, `torch.inference_mode`, batch
`--infer-batch`). "quit" answers with the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: x[:, :, ::s, ::s] zero-padded to `filters` channels (split evenly)."""

    def __init__(self, filters: int, stride: int):
        super().__init__()
        self.filters = filters
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The subsampled, channel-padded input."""
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.filters - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the (option-A) shortcut, then ReLU."""

    def __init__(self, in_channels: int, filters: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != filters:
            self.shortcut = ZeroPadShortcut(filters, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32BBN(nn.Module):
    """BBN's ResNet-32 with both branches concatenated (LADE's backbone), raw pixels -> logits."""

    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16, eps=1e-5, momentum=0.1)
        blocks = []
        channels = 16
        for stage, (filters, count) in enumerate(zip((16, 32, 64), (5, 5, 4)), start=1):
            for block in range(count):
                stride = 2 if stage > 1 and block == 0 else 1
                blocks.append(BasicBlock(channels, filters, stride))
                channels = filters
        self.trunk = nn.Sequential(*blocks)
        self.cb_block = BasicBlock(64, 64, 1)
        self.rb_block = BasicBlock(64, 64, 1)
        self.logits = nn.Linear(128, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        nn.init.xavier_uniform_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, classes] of raw 0..255 pixels [N, 3, H, W]."""
        x = (x - 127.5) / 127.5
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.trunk(x)
        x = torch.cat([self.cb_block(x), self.rb_block(x)], dim=1)
        return self.logits(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters and non-trainable state (batch-norm running statistics).

    `num_batches_tracked` is left out: Keras has no such variable.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = sum(
        b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked")
    )
    return {"trainable": trainable, "non_trainable": state}


class Worker:
    """Synthetic-batch training and inference timings of one model instance."""

    def __init__(self, classes: int, batch: int, infer_batch: int, seed: int = 0):
        torch.manual_seed(seed)
        self.model = ResNet32BBN(classes)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4
        )
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (batch, 3, 32, 32), generator=generator).float()
        self.labels = torch.randint(0, classes, (batch,), generator=generator)
        self.infer_images = torch.randint(
            0, 256, (infer_batch, 3, 32, 32), generator=generator
        ).float()

    def train(self, steps: int, warmup: int) -> dict[str, float]:
        """images/s over `steps` SGD steps after `warmup` untimed ones."""
        self.model.train()
        for step in range(warmup + steps):
            if step == warmup:
                started = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(self.images), self.labels)
            loss.backward()
            self.optimizer.step()
        seconds = time.perf_counter() - started
        return {"images_per_s": steps * len(self.images) / seconds, "seconds": seconds}

    def infer(self, steps: int, warmup: int) -> dict[str, float]:
        """images/s over `steps` eval-mode forward passes after `warmup` untimed ones."""
        self.model.eval()
        with torch.inference_mode():
            for step in range(warmup + steps):
                if step == warmup:
                    started = time.perf_counter()
                self.model(self.infer_images)
        seconds = time.perf_counter() - started
        return {"images_per_s": steps * len(self.infer_images) / seconds, "seconds": seconds}


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def serve(args: argparse.Namespace) -> None:
    """The JSON-lines command loop of `--serve` (see the module docstring)."""
    worker = Worker(args.classes, args.batch, args.infer_batch)
    ready = {
        "ready": True,
        "threads": torch.get_num_threads(),
        "parameters": parameter_counts(worker.model),
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        command, *numbers = line.split()
        if command == "quit":
            print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
            return
        steps, warmup = (int(n) for n in numbers)
        result = worker.train(steps, warmup) if command == "train" else worker.infer(steps, warmup)
        print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--infer-batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--count-params", action="store_true", help="print counts as JSON")
    parser.add_argument("--serve", action="store_true", help="JSON-lines timing worker")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.count_params:
        counts = parameter_counts(ResNet32BBN(args.classes))
        print(json.dumps({**counts, "total": counts["trainable"] + counts["non_trainable"]}))
        return 0
    if args.serve:
        serve(args)
        return 0
    parser.error("give --count-params or --serve")
    return 2


if __name__ == "__main__":
    sys.exit(main())
