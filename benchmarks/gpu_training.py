"""Stand-alone NB201 training throughput on a CUDA GPU: device-resident data and bf16 autocast, with and without.

    python benchmarks/gpu_training.py [--images 12800] [--batch-size 256] [--repeats 3] [--workers 8] [--profile]

One network (the best NB201 cell, C=16, N=5, 10 classes) trains on the same random CIFAR-shaped uint8
images (3x32x32) with the same optimiser settings (``train`` defaults of ``nas``: SGD, Nesterov 0.9,
gradient clipping 5) and CIFAR's augmentation (pad-4 random crop, horizontal flip). Four ways:

- DataLoader: a per-image torchvision ``DataLoader`` (PIL ``RandomCrop``/``RandomHorizontalFlip``,
  ``ToTensor``, ``Normalize``; ``--workers`` persistent workers, pinned memory, non-blocking copies) feeding
  forward / loss / backward / clip / SGD step, in float32 and under bf16 autocast;
- device-resident: ``nas.train.Trainer._train_epoch`` (the trainer every stage uses) over the dataset held
  on the GPU as one uint8 tensor, augmented there in whole batches, with ``amp`` off (float32) and on (bf16).

All run under the deterministic kernels every ``nas`` job uses on a GPU (``nas.devices``); two more rows
show what that costs (bf16 with cuDNN's autotuned, non-deterministic kernels) and what the activation
layout does (NCHW instead of the networks' channels-last).

Figures are training images per second over one epoch of ``--images`` images (last partial batch
dropped), medians of ``--repeats`` interleaved rounds after one warm-up round; the device is synchronised
before each clock read. Then the other label sources (rot, jig, col) train device-resident under bf16.

``--concurrent 1 2 4`` also times that many independent training processes sharing the GPU (as
``gpu_slots`` lets a study's jobs do): each holds its own copy of the data and network and trains
``--repeats`` epochs after a warm-up one; the figure is their images/s together.
"""
from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from _common import Row, interleaved, median, spread, synchronised
from input_pipeline import PerImageTaskDataset, as_image_data, random_cifar, throughput
import nas.spaces.nb201 as nb201
from nas.config import load_config
from nas.data import ImageData
from nas.devices import use_deterministic_cuda_kernels
from nas.spaces import build_space
from nas.tasks import build_task
from nas.tasks.base import Task
from nas.train import TaskModel, Trainer, build_optimizer
from step_speed import BEST_CELL


def network(cfg: dict[str, Any], task: Task, cell: str, device: torch.device, seed: int) -> TaskModel:
    torch.manual_seed(seed)
    space = build_space(cfg["space"])
    return TaskModel(space.build_network(space.from_str(cell), task.in_channels), task).to(device)


def device_resident_epoch(model: TaskModel, data: ImageData, training: dict[str, Any], device: torch.device,
                          seed: int, workdir: Path) -> Callable[[], None]:
    """One call = one ``Trainer._train_epoch`` over the GPU-held dataset (nothing re-written)."""
    trainer = Trainer(model, data, training, device, workdir / "unused-checkpoint.pt", identity={}, seed=seed,
                      progress=False, label="bench")
    return synchronised(lambda: trainer._train_epoch(0), device)


def dataloader_epoch(model: TaskModel, loader: DataLoader, training: dict[str, Any], device: torch.device,
                     bf16: bool) -> Callable[[], None]:
    """One call = one epoch of per-image DataLoader batches, copied to the GPU and trained on as ours does."""
    optimizer = build_optimizer(model.parameters(), training)
    task = model.task

    def run() -> None:
        model.train()
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                outputs = model(inputs)
            loss = task.loss(outputs.float(), targets, training["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), training["grad_clip"])
            optimizer.step()

    return synchronised(run, device)


def non_deterministic(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` with cuDNN autotuning and non-deterministic kernels allowed (what most training scripts run)."""

    def run() -> None:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        try:
            fn()
        finally:
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True)

    return run


def in_nchw(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` with the NB201 networks' activations in NCHW instead of ``nb201.ACTIVATION_FORMAT``."""

    def run() -> None:
        chosen = nb201.ACTIVATION_FORMAT
        nb201.ACTIVATION_FORMAT = torch.contiguous_format
        try:
            fn()
        finally:
            nb201.ACTIVATION_FORMAT = chosen

    return run


def concurrent_worker(args: argparse.Namespace, start: multiprocessing.Barrier,
                      seconds: multiprocessing.Queue) -> None:
    """One of several training processes on the GPU: a warm-up epoch, then ``args.repeats`` timed epochs."""
    device = torch.device("cuda", 0)
    use_deterministic_cuda_kernels()
    images_hwc, labels = random_cifar(args.images, args.seed)
    data = as_image_data(images_hwc, labels)
    cfg = load_config(None, ["task.name=cls", f"train.batch_size={args.batch_size}"])
    task = build_task(cfg["task"], data.info, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = device_resident_epoch(network(cfg, task, args.cell, device, args.seed), data.to(device), cfg["train"],
                                    device, args.seed, Path(tmp))
        run()
        start.wait()
        began = time.perf_counter()
        for _ in range(args.repeats):
            run()
        seconds.put(time.perf_counter() - began)


def concurrent_rate(args: argparse.Namespace, processes: int, per_epoch: int) -> float:
    """Images/s of ``processes`` training processes together on one GPU (each ``args.repeats`` epochs)."""
    context = multiprocessing.get_context("spawn")
    start, seconds = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=concurrent_worker, args=(args, start, seconds)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    slowest = max(seconds.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join()
    return processes * args.repeats * per_epoch / slowest


def profile_epoch(run: Callable[[], None], steps: int, label: str) -> None:
    """Where one epoch's time goes: the operators with most GPU time, and GPU-busy time against wall time."""
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = interleaved([run], repeats=1, warmup=0)[0][0]
    events = prof.key_averages()
    kernels = [event for event in events if event.device_type.name == "CUDA"]
    gpu_busy = sum(event.self_device_time_total for event in kernels) / 1e6
    print(f"\nProfile of one epoch of {label} ({steps} steps, profiler on): wall {wall:.2f} s, GPU kernels {gpu_busy:.2f} s "
          f"({100 * gpu_busy / wall:.0f} % busy), {sum(e.count for e in kernels):,} "
          f"kernel launches\n")
    print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=70))


def rate_text(rates: list[float]) -> str:
    return f"{median(rates):,.0f} img/s {spread(rates)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12_800, help="random CIFAR-shaped images, one epoch per timed call")
    parser.add_argument("--batch-size", type=int, default=256, help="NAS-Bench-201's training batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    parser.add_argument("--cell", default=BEST_CELL)
    parser.add_argument("--tasks", nargs="*", default=["rot", "jig", "col"], help="label sources also timed (bf16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrent", type=int, nargs="*", default=[],
                        help="numbers of training processes sharing the GPU to time together, e.g. 1 2 4")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top operators for one epoch of the default (bf16) trainer")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_training.py needs a CUDA device; none is visible (torch.cuda.is_available() is False)")

    device = torch.device("cuda", 0)
    use_deterministic_cuda_kernels()
    images_hwc, labels = random_cifar(args.images, args.seed)
    host_data = as_image_data(images_hwc, labels)
    gpu_data = host_data.to(device)
    per_epoch = (args.images // args.batch_size) * args.batch_size
    cfg = load_config(None, ["task.name=cls", f"train.batch_size={args.batch_size}"])
    training = cfg["train"]
    task = build_task(cfg["task"], host_data.info, args.seed)
    props = torch.cuda.get_device_properties(device)
    print(f"# Stand-alone NB201 training on {props.name}: images/s, device-resident data and bf16, with and without\n")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"{props.multi_processor_count} SMs; cell {args.cell}, C={cfg['space']['channels']}, "
          f"N={cfg['space']['cells_per_stage']}; {args.images:,} images 3x32x32, batch {args.batch_size}; "
          f"{args.repeats} interleaved repeats (+1 warm-up), medians (± half the range); DataLoader with "
          f"{args.workers} workers, pinned memory.\n", flush=True)

    loader = DataLoader(PerImageTaskDataset(images_hwc, labels, task), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0,
                        pin_memory=True, generator=torch.Generator().manual_seed(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {
            "DataLoader, float32": dataloader_epoch(network(cfg, task, args.cell, device, args.seed), loader, training,
                                                    device, bf16=False),
            "DataLoader, bf16 autocast": dataloader_epoch(network(cfg, task, args.cell, device, args.seed), loader,
                                                          training, device, bf16=True),
            "device-resident, float32": device_resident_epoch(network(cfg, task, args.cell, device, args.seed), gpu_data,
                                                              {**training, "amp": False}, device, args.seed, Path(tmp)),
            "device-resident, bf16 autocast (nas default)": device_resident_epoch(
                network(cfg, task, args.cell, device, args.seed), gpu_data, {**training, "amp": True}, device,
                args.seed, Path(tmp)),
        }
        contenders["device-resident, bf16, NCHW activations"] = in_nchw(device_resident_epoch(
            network(cfg, task, args.cell, device, args.seed), gpu_data, {**training, "amp": True}, device, args.seed,
            Path(tmp)))
        contenders["device-resident, bf16, non-deterministic cuDNN autotuned"] = non_deterministic(
            device_resident_epoch(network(cfg, task, args.cell, device, args.seed), gpu_data,
                                  {**training, "amp": True}, device, args.seed, Path(tmp)))
        times = interleaved(list(contenders.values()), args.repeats)
        rates = {name: throughput(per_epoch, t) for name, t in zip(contenders, times)}
        baseline = median(rates["DataLoader, float32"])
        rows = [Row(name, rate_text(r), "", median(r) / baseline) for name, r in rates.items()]

        for name in args.tasks:
            task_cfg = load_config(None, [f"task.name={name}", f"train.batch_size={args.batch_size}"])
            other = build_task(task_cfg["task"], host_data.info, args.seed)
            run = device_resident_epoch(network(task_cfg, other, args.cell, device, args.seed), gpu_data,
                                        {**task_cfg["train"], "amp": True}, device, args.seed, Path(tmp))
            other_rates = throughput(per_epoch, interleaved([run], args.repeats)[0])
            rows.append(Row(f"{name}: device-resident, bf16 autocast", rate_text(other_rates), "", None,
                            "source images/s (no DataLoader peer)"))

    print("| cls training, stand-alone best cell | images/s | speed-up vs DataLoader float32 |")
    print("|---|---|---|")
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else row.note
        print(f"| {row.benchmark} | {row.ours} | {ratio} |")
    print(f"\nPeak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB")
    if args.concurrent:
        print("\n| training processes sharing the GPU (device-resident, bf16) | images/s together | per process |")
        print("|---|---|---|")
        for processes in args.concurrent:
            rate = concurrent_rate(args, processes, per_epoch)
            print(f"| {processes} | {rate:,.0f} | {rate / processes:,.0f} |", flush=True)
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            default_run = device_resident_epoch(network(cfg, task, args.cell, device, args.seed), gpu_data,
                                                {**training, "amp": True}, device, args.seed, Path(tmp))
            profile_epoch(default_run, per_epoch // args.batch_size, "the default (bf16) trainer")
            profile_epoch(in_nchw(default_run), per_epoch // args.batch_size,
                          "the default (bf16) trainer, NCHW activations")


if __name__ == "__main__":
    main()
