"""Training-step speed on NAS-Bench-201 (C=16, N=5, CIFAR-shaped batch): ``nas`` against xautodl, same run.

    python benchmarks/step_speed.py [--repeats 10] [--threads 2] [--batch-size 64] [--steps 3] [--device cpu]
                                    [--benches supernet standalone gdas darts_v1]

Compared, each on the same random uint8 batch (3x32x32, 10 classes), the same thread count and the same
optimiser (SGD, Nesterov momentum 0.9, lr 0.025, weight decay 5e-4, gradient clipping at 5: the
defaults of ``nas`` and the settings of xautodl's NB201 search configs):

- SPOS / uniform single-path supernet weight step: forward, backward and SGD step through one path
  drawn uniformly per step (``NB201Space.sample``; both sides get the same sequence of paths).
  Ours: ``nas.train.Trainer._train_epoch`` over a supernet built by ``nas.spaces`` (the trainer's real
  loop, including its batched crop/flip augmentation and normalisation). xautodl: its RSPS supernet
  (``get_cell_based_tiny_net(name='RANDOM')``, the model its RANDOM-NAS script trains) with the drawn
  path set as ``arch_cache``, fed a ready normalised tensor (no augmentation), step as in its script.
- Stand-alone cell step: the same loop for the discrete network of one cell (default: the best NB201
  cell) against xautodl's ``TinyNetwork`` (``name='infer.tiny'``) of the same genotype.
- The stand-alone step's convolutions alone: the forward and backward of every convolution that step
  runs, with nothing else (a worker of ours, ``convolutions_alone``). Its ratio is the most that any
  code around the convolutions could reach against xautodl on this machine, were BatchNorm, ReLU,
  the sums, the loss and the optimiser free.
- GDAS and DARTS-V1 search iterations: one weight step (as above, through the mixture: GDAS's Gumbel
  straight-through sample running one op per edge at tau 10, the first epoch's; DARTS-V1's softmax over
  every op) on a train batch, then one architecture step (Adam, lr 3e-4, betas (0.5, 0.999), weight decay
  1e-3) on a second batch, weights first as xautodl. Ours: ``Trainer._train_epoch`` with the strategy
  ``nas.search.differentiable.build_strategy`` builds for ``nas search-differentiable`` (its search
  batches augmented as its train batches). xautodl: ``get_cell_based_tiny_net(name='GDAS' | 'DARTS-V1')``
  stepped as ``search_func`` of its ``exps/NAS-Bench-201-algos/{GDAS,DARTS-V1}.py`` (SGD over
  ``get_weights()``, clipping over every parameter, the architecture step's backward through the whole
  network), fed two ready normalised tensors.

``--device cuda`` runs both on the GPU (ours with its default bf16 autocast, xautodl in float32 as its
scripts train), both under the deterministic kernels every ``nas`` GPU job uses, and synchronises the
device before each clock read.

Each contender runs in a process of its own, set up the way it runs for real: ours as a ``nas`` job
sets up its process (``nas.devices.keep_freed_host_memory``: glibc keeps freed blocks for reuse),
xautodl as its scripts run (glibc's defaults). A third process runs xautodl with our allocator setting,
so that the table also shows what the network code alone gains. The processes take turns: one call
each per round, only one running at a time.

Timing: ``--repeats`` rounds of (ours, xautodl, xautodl with our allocator setting), each call
``--steps`` training steps, after one warm-up call; the table gives medians in seconds per step and the
ratio xautodl / ours (>1: ours is faster). xautodl is optional: ``pip install --no-deps xautodl==1.0.0
fvcore``; without it only our figures print.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from _common import (Row, host_speed, load_average, machine_line, markdown_table, median, set_threads, spread,
                     synchronised, time_call)
from nas.config import load_config
from nas.data import DatasetInfo, ImageData
from nas.devices import keep_freed_host_memory, use_deterministic_cuda_kernels
from nas.search.differentiable import build_strategy
from nas.spaces import Arch, SearchSpace, build_space
from nas.spaces.nb201_ops import ACTIVATION_FORMAT
from nas.tasks import build_task
from nas.tasks.base import normalize
from nas.train import ArchStrategy, TaskModel, Trainer

BEST_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NUM_CLASSES = 10
TARGET_SPEEDUP = 1.3
XAUTODL_HINT = "pip install --no-deps xautodl==1.0.0 fvcore"


def random_cifar_batch(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, 32, 32) and labels in range(10), the same for every contender."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    return images, labels


def replicated_dataset(images: torch.Tensor, labels: torch.Tensor, copies: int,
                       search: tuple[torch.Tensor, torch.Tensor] | None = None) -> ImageData:
    """A train split of ``copies`` copies of the batch, so one trainer epoch is ``copies`` steps on it; with
    ``search``, a search split of ``copies`` copies of that second batch (a differentiable search's
    architecture steps read it). Normalisation statistics: those of the train batch."""
    stats = images.float().div(255.0)
    train_images, train_labels = images.repeat(copies, 1, 1, 1), labels.repeat(copies)
    empty = torch.zeros(0, dtype=torch.int64)
    splits = {"train": torch.arange(len(train_images)), "valid": empty, "search": empty}
    if search is not None:
        search_images, search_labels = search[0].repeat(copies, 1, 1, 1), search[1].repeat(copies)
        splits["search"] = torch.arange(len(search_images)) + len(train_images)
        train_images, train_labels = torch.cat([train_images, search_images]), torch.cat([train_labels, search_labels])
    info = DatasetInfo(name="random-cifar", num_classes=NUM_CLASSES, channels=3, image_size=32,
                       num_images=len(train_images),
                       mean=tuple(stats.mean(dim=(0, 2, 3)).tolist()), std=tuple(stats.std(dim=(0, 2, 3)).tolist()),
                       flip=True, crop_padding=4)  # CIFAR's augmentation rule
    return ImageData(images=train_images, labels=train_labels, info=info, splits=splits)


def our_epoch(model: TaskModel, data: ImageData, training: dict[str, Any], seed: int, workdir: Path,
              path_sampler: Callable[[random.Random], Arch] | None,
              device: torch.device = torch.device("cpu"), strategy: ArchStrategy | None = None) -> Callable[[], None]:
    """One call = one ``Trainer._train_epoch`` over ``data`` (the trainer's own step loop, nothing re-written)."""
    trainer = Trainer(model, data.to(device), training, device, workdir / "unused-checkpoint.pt", identity={},
                      seed=seed, path_sampler=path_sampler, progress=False, label="bench", strategy=strategy)
    return synchronised(lambda: trainer._train_epoch(0), device)


def xautodl_steps(network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, training: dict[str, Any],
                  steps: int, set_path: Callable[[], None] | None,
                  device: torch.device = torch.device("cpu")) -> Callable[[], None]:
    """One call = ``steps`` weight steps the way xautodl's NB201 search scripts take them."""
    network.to(device)
    inputs, targets = inputs.to(device), targets.to(device)
    # as xautodl's get_optim_scheduler builds it: PyTorch's default (per-tensor) SGD
    optimizer = torch.optim.SGD(network.parameters(), training["lr"], momentum=training["momentum"],
                                weight_decay=training["weight_decay"], nesterov=training["nesterov"])
    network.train()

    def run() -> None:
        for _ in range(steps):
            if set_path is not None:
                set_path()
            optimizer.zero_grad()
            _, logits = network(inputs)
            loss = F.cross_entropy(logits, targets)
            loss.backward()
            nn.utils.clip_grad_norm_(network.parameters(), training["grad_clip"])
            optimizer.step()

    return synchronised(run, device)


def xautodl_search_steps(network: nn.Module, base: tuple[torch.Tensor, torch.Tensor],
                         arch: tuple[torch.Tensor, torch.Tensor], training: dict[str, Any], dcfg: dict[str, Any],
                         steps: int, device: torch.device = torch.device("cpu")) -> Callable[[], None]:
    """One call = ``steps`` iterations of ``search_func`` in xautodl's GDAS.py / DARTS-V1.py: a weight step on
    ``base``, then an architecture step on ``arch``."""
    network.to(device)
    base_inputs, base_targets = (t.to(device) for t in base)
    arch_inputs, arch_targets = (t.to(device) for t in arch)
    # get_optim_scheduler(search_model.get_weights(), config) and the scripts' Adam over get_alphas()
    w_optimizer = torch.optim.SGD(network.get_weights(), training["lr"], momentum=training["momentum"],
                                  weight_decay=training["weight_decay"], nesterov=training["nesterov"])
    a_optimizer = torch.optim.Adam(network.get_alphas(), lr=dcfg["arch_lr"], betas=tuple(dcfg["arch_betas"]),
                                   weight_decay=dcfg["arch_weight_decay"])
    if hasattr(network, "set_tau"):
        network.set_tau(dcfg["tau_max"])  # the first epoch's: tau_max - (tau_max - tau_min) * 0 / (E - 1)
    network.train()

    def run() -> None:
        for _ in range(steps):
            w_optimizer.zero_grad()
            _, logits = network(base_inputs)
            F.cross_entropy(logits, base_targets).backward()
            nn.utils.clip_grad_norm_(network.parameters(), training["grad_clip"])
            w_optimizer.step()
            a_optimizer.zero_grad()
            _, logits = network(arch_inputs)
            F.cross_entropy(logits, arch_targets).backward()
            a_optimizer.step()

    return synchronised(run, device)


def load_xautodl() -> Any | None:
    """The ``xautodl.models`` module, or None when it cannot be imported."""
    try:
        import xautodl.models as models
    except ImportError:
        return None
    return models


def xautodl_missing_reason() -> str | None:
    """Why xautodl cannot be imported here, or None when it can (checked by the driver, which never imports it)."""
    probe = subprocess.run([sys.executable, "-c", "import xautodl.models"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit status {probe.returncode}"


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def seconds_row(name: str, ours: list[float], peer: list[float] | None, note: str = "", judged: bool = True) -> Row:
    ours_s = median(ours)
    if peer is None:
        return Row(name, f"{ours_s:.3f} s/step {spread(ours)}", "xautodl absent", None, note or "n/a", judged)
    peer_s = median(peer)
    return Row(name, f"{ours_s:.3f} s/step {spread(ours)}", f"{peer_s:.3f} s/step {spread(peer)}",
               peer_s / ours_s, note, judged)


def recorded_convolutions(model: nn.Module, inputs: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Size, bool]]:
    """Every convolution one forward of ``model`` runs: (module, input shape, whether its input needs a gradient)."""
    calls: list[tuple[nn.Conv2d, torch.Size, bool]] = []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        calls.append((module, args[0].shape, args[0].requires_grad))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def convolutions_alone(model: nn.Module, inputs: torch.Tensor, steps: int,
                       device: torch.device = torch.device("cpu")) -> Callable[[], None]:
    """One call = ``steps`` times the forward and backward of every convolution of one training step, nothing else.

    Each convolution gets its own input and output gradient, and its output stays alive until the
    backward pass, as saved activations do, so that caches see as many distinct tensors as in the
    step. The time is what a step would take if every other op (BatchNorm, ReLU, sums, loss,
    optimiser) cost nothing: the floor that our network code can approach on this machine. Float32
    only: on CUDA our step runs under bf16 autocast, so the replay would not be the step's arithmetic.
    """
    calls = recorded_convolutions(model, inputs.to(device))
    generator = torch.Generator().manual_seed(0)
    replay = []
    for conv, shape, input_needs_grad in calls:
        x = torch.randn(shape, generator=generator).to(device).contiguous(memory_format=ACTIVATION_FORMAT)
        with torch.no_grad():
            y = conv(x)
        grad_y = torch.randn(y.shape, generator=generator).to(device).contiguous(memory_format=ACTIVATION_FORMAT)
        replay.append((conv, x, grad_y, [input_needs_grad, True, conv.bias is not None]))

    def run() -> None:
        for _ in range(steps):
            with torch.no_grad():
                outputs = [conv(x) for conv, x, _, _ in replay]
                for conv, x, grad_y, mask in reversed(replay):
                    outputs.pop()
                    torch.ops.aten.convolution_backward(grad_y, x, conv.weight, None if conv.bias is None else
                                                        [conv.out_channels], conv.stride, conv.padding,
                                                        conv.dilation, False, [0, 0], conv.groups, mask)

    return synchronised(run, device)


# ---- one contender per process ---------------------------------------------------------------------------
ROLES = ("ours", "xautodl", "xautodl+kept")  # the last: xautodl in a process with nas's allocator setting
SEARCH_BENCHES = {"gdas": "GDAS", "darts_v1": "DARTS-V1"}  # ours -> xautodl's model name
BENCHES = {"supernet": "SPOS supernet weight step (uniform single path)",
           "standalone": "stand-alone cell training step",
           "gdas": "GDAS search iteration (weight step + architecture step)",
           "darts_v1": "DARTS-V1 search iteration (weight step + architecture step)"}
FLOOR_ROLE = "ours-convolutions"  # stand-alone only: our step's convolutions and nothing else


def build_contender(role: str, bench: str, args: argparse.Namespace, workdir: Path) -> tuple[Callable[[], None], int]:
    """One call = ``--steps`` training steps of ``bench`` by ``role``; also the contender's parameter count."""
    device = torch.device(args.device)
    search = bench in SEARCH_BENCHES
    cfg = load_config(None, [f"space.channels={args.channels}", f"space.cells_per_stage={args.cells}", "task.name=cls",
                             f"supernet.batch_size={args.batch_size}", f"train.batch_size={args.batch_size}",
                             f"differentiable.training.batch_size={args.batch_size}",
                             f"differentiable.method={bench if search else 'gdas'}"])
    space: SearchSpace = build_space(cfg["space"])
    images, labels = random_cifar_batch(args.batch_size, args.seed)
    arch_batch = random_cifar_batch(args.batch_size, args.seed + 1) if search else None
    data = replicated_dataset(images, labels, args.steps, search=arch_batch)
    dcfg = cfg["differentiable"]
    training = dcfg["training"] if search else cfg["supernet" if bench == "supernet" else "train"]
    torch.manual_seed(args.seed)
    if role in ("ours", FLOOR_ROLE):
        task = build_task(cfg["task"], data.info, args.seed)
        if search:
            model = TaskModel(space.build_supernet(task.in_channels), task)
            strategy = build_strategy(space, dcfg, training["epochs"], device)
            return (our_epoch(model, data, training, args.seed, workdir, None, device, strategy),
                    count_params(model) + strategy.alphas.numel())
        if bench == "supernet":
            model = TaskModel(space.build_supernet(task.in_channels), task)
            return our_epoch(model, data, training, args.seed, workdir, space.sample, device), count_params(model)
        model = TaskModel(space.build_network(space.from_str(args.cell), task.in_channels), task)
        if role == FLOOR_ROLE:
            return convolutions_alone(model, normalize(images.float() / 255.0, data.info), args.steps,
                                      device), count_params(model)
        return our_epoch(model, data, training, args.seed, workdir, None, device), count_params(model)
    xautodl = load_xautodl()
    peer_inputs = normalize(images.float() / 255.0, data.info)
    supernet_flags = {"affine": cfg["space"]["supernet"]["bn_affine"],
                      "track_running_stats": cfg["space"]["supernet"]["bn_track_stats"]}
    if search:
        peer_net = xautodl.get_cell_based_tiny_net({
            "name": SEARCH_BENCHES[bench], "C": args.channels, "N": args.cells, "max_nodes": 4,
            "num_classes": NUM_CLASSES, "space": list(space.ops), **supernet_flags})
        peer_arch = (normalize(arch_batch[0].float() / 255.0, data.info), arch_batch[1])
        return (xautodl_search_steps(peer_net, (peer_inputs, labels), peer_arch, training, dcfg, args.steps, device),
                count_params(peer_net))
    if bench == "standalone":
        peer_net = xautodl.get_cell_based_tiny_net({"name": "infer.tiny", "C": args.channels, "N": args.cells,
                                                    "arch_str": args.cell, "num_classes": NUM_CLASSES})
        return xautodl_steps(peer_net, peer_inputs, labels, training, args.steps, None, device), count_params(peer_net)
    peer_net = xautodl.get_cell_based_tiny_net({
        "name": "RANDOM", "C": args.channels, "N": args.cells, "max_nodes": 4, "num_classes": NUM_CLASSES,
        "space": list(space.ops), **supernet_flags})
    path_rng = random.Random(args.seed)  # the trainer's path RNG is seeded the same way: same paths

    def set_path() -> None:
        peer_net.arch_cache = xautodl.CellStructure.str2structure(space.to_str(space.sample(path_rng)))

    return xautodl_steps(peer_net, peer_inputs, labels, training, args.steps, set_path, device), count_params(peer_net)


def worker(args: argparse.Namespace) -> None:
    """A contender's process: set up as it runs for real, then one timed call per line read from stdin."""
    role, bench = args.worker
    if role != "xautodl":
        keep_freed_host_memory()  # what every nas job does first (nas.stages)
    device = torch.device(args.device)
    if device.type == "cuda":
        use_deterministic_cuda_kernels()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run, params = build_contender(role, bench, args, Path(tmp))
        run()  # warm-up: allocator growth, oneDNN kernel selection
        print(params, flush=True)
        for _ in sys.stdin:
            print(time_call(run) / args.steps, flush=True)


class Contender:
    """A worker process driven over its stdin and stdout."""

    def __init__(self, role: str, bench: str) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", role, bench],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.params = int(self._read())

    def _read(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark worker ({' '.join(self.process.args[-3:])}) died; its error is above")
        return line

    def step_seconds(self) -> float:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def measure(bench: str, roles: list[str], repeats: int) -> dict[str, tuple[list[float], int]]:
    """Seconds per step of each role, ``repeats`` rounds of one call each in turn; and parameter counts."""
    contenders = {role: Contender(role, bench) for role in roles}
    times: dict[str, list[float]] = {role: [] for role in roles}
    try:
        for _ in range(repeats):
            for role, contender in contenders.items():
                times[role].append(contender.step_seconds())
    finally:
        for contender in contenders.values():
            contender.close()
    return {role: (times[role], contenders[role].params) for role in roles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds of (ours, xautodl); medians reported")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells", type=int, default=5, help="cells per stage (N)")
    parser.add_argument("--cell", default=BEST_CELL, help="the stand-alone cell, as an NB201 string")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--benches", nargs="+", choices=list(BENCHES), default=list(BENCHES),
                        help="which steps to time (default: all)")
    parser.add_argument("--worker", nargs=2, metavar=("ROLE", "BENCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    missing = xautodl_missing_reason()
    if missing:
        print(f"xautodl is not installed ({missing}); printing our figures only. To compare: {XAUTODL_HINT}\n")
    roles = ["ours"] if missing else list(ROLES)
    print(f"# Training-step speed: nas vs xautodl, NB201 C={args.channels} N={args.cells}, batch {args.batch_size}, "
          f"{args.device}\n")
    print(machine_line(args.threads))
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch CUDA {torch.version.cuda}; ours under bf16 autocast "
              f"(train.amp / supernet.amp default), xautodl in float32")
    print(f"Settings: {args.repeats} interleaved repeats x {args.steps} steps, medians (± half the range); "
          f"ratio = xautodl time / our time; each contender in its own process.\n")

    rows: list[Row] = []
    notes: list[str] = []
    for bench in args.benches:
        label = BENCHES[bench]
        with_floor = bench == "standalone" and args.device == "cpu"
        bench_roles = roles + [FLOOR_ROLE] if with_floor else roles
        result = measure(bench, bench_roles, args.repeats)
        ours, ours_params = result["ours"]
        floor_label = f"{label}: its convolutions alone (every other op free)"
        if missing:
            rows.append(seconds_row(label, ours, None))
            if with_floor:
                rows.append(seconds_row(floor_label, result[FLOOR_ROLE][0], None))
            continue
        rows.append(seconds_row(label, ours, result["xautodl"][0]))
        rows.append(seconds_row(f"{label}, xautodl given our allocator setting", ours, result["xautodl+kept"][0],
                                "network code alone"))
        if with_floor:
            rows.append(seconds_row(floor_label, result[FLOOR_ROLE][0], result["xautodl"][0],
                                    "the ceiling: the most any code around these convolutions could reach here",
                                    judged=False))
        notes.append(f"{bench} parameters: ours {ours_params:,}, xautodl {result['xautodl'][1]:,}")

    print(markdown_table(rows, "xautodl", TARGET_SPEEDUP))
    if args.device != "cpu":
        print("\nNo convolutions-alone row: it replays float32 convolutions, and our GPU step runs under bf16 autocast.")
    print(f"\nCell: {args.cell}")
    for note in notes:
        print(f"- {note}")
    print("- ours = Trainer._train_epoch (includes batched crop/flip augmentation and normalisation), in a process "
          "set up as a nas job; xautodl = forward/backward/clip/SGD step on a ready normalised tensor, in a process "
          "with glibc's default allocator (the row after it: with ours).")
    if any(bench in SEARCH_BENCHES for bench in args.benches):
        print("- search iterations: one step = one weight step and one architecture step; ours also augments and "
              "normalises the architecture step's batch; parameters include the 30 alphas on both sides.")
    print(f"Load average at the end: {load_average()}; host speed {host_speed():.0f} GFLOP/s (conv probe)")


if __name__ == "__main__":
    main()
