"""Input-pipeline throughput: our batched data path against a per-image torchvision DataLoader, same run.

    python benchmarks/input_pipeline.py [--repeats 3] [--threads 2] [--batch-size 64] [--images 10000]

Both sides turn the same in-memory random CIFAR-shaped uint8 images (3x32x32, 10 classes) into training
inputs and targets for each task, with the task's training augmentation:

- ours: ``nas.data.iterate_batches`` (shuffled, drop_last) and the task's ``prepare(..., train=True)``,
  exactly as ``Trainer._train_epoch`` calls them: crop/flip, then the task's targets, on whole batches;
- DataLoader: a per-image ``Dataset`` the way the seed codebases wrote it: PIL image,
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, then the task's work per image:
  normalise (cls); the four quarter turns (rot); random grayscale, per-tile random crops, per-tile
  normalisation and one permutation of the tiles (jig, with our task's grid, tile size and permutation
  set); Lab conversion (kornia) and nearest ab bin per pixel (col, our task's bins). It runs with
  ``num_workers`` 0 and 2 (persistent workers, so start-up is paid in the warm-up round only); the
  faster of the two is the peer figure.

Figures are source images per second (rot's four rotations of an image count once), medians of
``--repeats`` interleaved rounds (ours, DataLoader 0 workers, DataLoader 2 workers) after one warm-up
round; ratio = ours / best DataLoader.
"""
from __future__ import annotations

import argparse
import random
from typing import Any, Callable

import numpy as np
import torch
from kornia.color import rgb_to_lab
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from _common import (Row, host_speed, interleaved, load_average, machine_line, markdown_table, median, set_threads,
                     spread)
from nas.config import load_config
from nas.data import DatasetInfo, ImageData, iterate_batches
from nas.tasks import build_task
from nas.tasks.base import Task
from nas.tasks.col import Colorization, nearest_bin
from nas.tasks.jig import Jigsaw

NUM_CLASSES = 10
TARGET_SPEEDUP = 5.0
WORKER_COUNTS = (0, 2)
# (row label, task overrides): jig twice, the 2x2 grid our task picks for 32-px images and the 3x3 grid.
TASKS = (
    ("cls", ["task.name=cls"]),
    ("rot", ["task.name=rot"]),
    ("jig", ["task.name=jig"]),
    ("jig 3x3", ["task.name=jig", "task.jig.grid=3"]),
    ("col", ["task.name=col"]),
)


def random_cifar(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 32, 32, 3), the layout torchvision's CIFAR datasets hold, and labels in range(10)."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (num_images, 32, 32, 3), dtype=np.uint8), rng.randint(0, NUM_CLASSES, num_images)


def as_image_data(images_hwc: np.ndarray, labels: np.ndarray) -> ImageData:
    """The same images as our in-memory dataset: one (N, C, H, W) uint8 tensor, every image in ``train``."""
    images = torch.from_numpy(np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)))
    stats = images.float().div(255.0)
    info = DatasetInfo(name="random-cifar", num_classes=NUM_CLASSES, channels=3, image_size=32, num_images=len(images),
                       mean=tuple(stats.mean(dim=(0, 2, 3)).tolist()), std=tuple(stats.std(dim=(0, 2, 3)).tolist()),
                       flip=True, crop_padding=4)  # CIFAR's augmentation rule
    empty = torch.zeros(0, dtype=torch.int64)
    return ImageData(images=images, labels=torch.from_numpy(labels.astype(np.int64)), info=info,
                     splits={"train": torch.arange(len(images)), "valid": empty, "search": empty})


def our_pass(data: ImageData, task: Task, batch_size: int, seed: int) -> Callable[[], int]:
    """One call = one epoch of our data path; returns the number of source images it produced."""
    generator = torch.Generator().manual_seed(seed)

    def run() -> int:
        produced = 0
        for images, labels, ids in iterate_batches(data, "train", batch_size, shuffle=True, generator=generator,
                                                   drop_last=True):
            task.prepare(images.float() / 255.0, labels, ids, train=True, generator=generator)
            produced += len(ids)
        return produced

    return run


class PerImageTaskDataset(Dataset):
    """One image at a time: torchvision crop/flip on a PIL image, then the task's inputs and target."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, task: Task) -> None:
        self.images = images_hwc
        self.labels = labels
        self.task = task
        info = task.info
        self.augment = transforms.Compose([
            transforms.RandomCrop(info.image_size, padding=info.crop_padding),
            transforms.RandomHorizontalFlip(),
        ])
        self.to_tensor = transforms.ToTensor()
        self.normalize = transforms.Normalize(info.mean, info.std)
        if isinstance(task, Jigsaw):
            self.grayscale = transforms.RandomGrayscale(p=task.gray_prob)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image = self.augment(Image.fromarray(self.images[index]))
        name = self.task.name
        if name == "cls":
            return self.normalize(self.to_tensor(image)), int(self.labels[index])
        if name == "rot":
            tensor = self.to_tensor(image)
            rotations = [self.normalize(torch.rot90(tensor, k, dims=(1, 2))) for k in range(4)]
            return torch.stack(rotations), torch.arange(4)
        if name == "jig":
            return self._jigsaw(self.to_tensor(self.grayscale(image)))
        if name == "col":
            return self._colorization(self.to_tensor(image))
        raise ValueError(f"no per-image version of task {name!r}")

    def _jigsaw(self, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        task: Jigsaw = self.task  # type: ignore[assignment]
        slack = task.cell - task.tile
        tiles = []
        for row in range(task.grid):
            for col in range(task.grid):
                top = row * task.cell + random.randint(0, slack)
                left = col * task.cell + random.randint(0, slack)
                tile = image[:, top:top + task.tile, left:left + task.tile]
                tiles.append((tile - tile.mean(dim=(1, 2), keepdim=True)) / (tile.std(dim=(1, 2), keepdim=True) + 1e-5))
        perm_index = random.randrange(len(task.permutations))
        placed: list[torch.Tensor] = [tiles[0]] * len(tiles)
        for position, slot in enumerate(task.permutations[perm_index].tolist()):
            placed[slot] = tiles[position]
        return torch.stack(placed), perm_index

    def _colorization(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        task: Colorization = self.task  # type: ignore[assignment]
        lab = rgb_to_lab(image[None])[0]
        lightness = (lab[:1] / 100.0 - task.l_mean) / task.l_std
        return lightness, nearest_bin(lab[None, 1:], task.bins)[0]


def dataloader_pass(dataset: Dataset, batch_size: int, workers: int, seed: int) -> Callable[[], int]:
    """One call = one epoch of a shuffling DataLoader over ``dataset``; returns the source images produced."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))

    def run() -> int:
        produced = 0
        for inputs, _targets in loader:
            produced += len(inputs)
        return produced

    return run


def throughput(images_per_call: int, seconds: list[float]) -> list[float]:
    return [images_per_call / s for s in seconds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; medians reported")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the main process")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=10_000, help="random CIFAR-shaped images held in memory")
    parser.add_argument("--tasks", nargs="+", default=[label for label, _ in TASKS],
                        choices=[label for label, _ in TASKS])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    set_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    images, labels = random_cifar(args.images, args.seed)
    data = as_image_data(images, labels)
    per_call = (args.images // args.batch_size) * args.batch_size  # both sides drop the last partial batch
    print(f"# Input pipeline: nas batched data path vs per-image torchvision DataLoader, "
          f"{args.images:,} images 3x32x32, batch {args.batch_size}\n")
    print(machine_line(args.threads))
    print(f"Settings: {args.repeats} interleaved repeats (+1 warm-up) of one epoch each; medians (± half the range) "
          f"in source images/s; DataLoader num_workers {' and '.join(map(str, WORKER_COUNTS))}, best shown; "
          f"ratio = ours / best DataLoader.\n")

    rows: list[Row] = []
    for label, overrides in TASKS:
        if label not in args.tasks:
            continue
        task = build_task(load_config(None, overrides)["task"], data.info, args.seed)
        dataset = PerImageTaskDataset(images, labels, task)
        contenders = [our_pass(data, task, args.batch_size, args.seed)]
        contenders += [dataloader_pass(dataset, args.batch_size, workers, args.seed) for workers in WORKER_COUNTS]
        times = interleaved(contenders, args.repeats)
        ours = throughput(per_call, times[0])
        peers = {workers: throughput(per_call, t) for workers, t in zip(WORKER_COUNTS, times[1:])}
        best = max(peers, key=lambda w: median(peers[w]))
        detail = ", ".join(f"{w} workers {median(v):,.0f}" for w, v in peers.items())
        if isinstance(task, Jigsaw):
            label = f"{label} ({task.grid}x{task.grid} grid, {task.num_outputs} permutations)"
        elif isinstance(task, Colorization):
            label = f"{label} ({task.num_outputs} ab bins)"
        rows.append(Row(label, f"{median(ours):,.0f} img/s {spread(ours)}",
                        f"{median(peers[best]):,.0f} img/s {spread(peers[best])} ({detail})",
                        median(ours) / median(peers[best])))
        print(f"  measured {label}", flush=True)
    print()
    print(markdown_table(rows, "DataLoader (per image)", TARGET_SPEEDUP))
    print(f"Load average at the end: {load_average()}; host speed {host_speed():.0f} GFLOP/s (conv probe)")


if __name__ == "__main__":
    main()
