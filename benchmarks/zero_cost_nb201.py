"""Agreement with the literature: Spearman |rho| of data-free zero-cost proxies vs NAS-Bench-201 test accuracy.

Published (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021, Table 1), over all
15,625 cells against 200-epoch test accuracy. For CIFAR-10 the script prints three truths: the
`cifar10` split (trained on all 50k images) and the `cifar10-valid` split (trained on 25k) valid and
test accuracy; the published CIFAR-10 figure is against the `cifar10-valid` split's test accuracy
(zero-cost-nas nasbench2_pred.py reads that split for CIFAR-10). Each cell is scored on the network
`nas proxies` builds (`--network`, the config key proxies.network; default benchmark: zero-cost-nas's
own NB201 network), initialised with seed = the cell's index. The data-dependent proxies (snip,
grad_norm, grasp, fisher, jacob_cov) need CIFAR / ImageNet16 images, which this machine does not
have; run them with `nas proxies` on a machine that has the data.

    python benchmarks/zero_cost_nb201.py [--tables DIR] [--limit N] [--workers 2] [--network benchmark|standalone]

The ground truth is the table shipped in the package (nas/resources/nb201.csv.gz); ``--tables DIR``
reads the published CSV files (nb201_200ep_test.csv, nb201_cifar10-valid_200ep.csv) from DIR instead.
"""
from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

PUBLISHED = {  # Table 1 of Abdelfattah et al. (ICLR 2021), Spearman rho vs test accuracy
    "cifar10": {"grad_norm": 0.594, "snip": 0.596, "grasp": 0.514, "fisher": 0.36, "synflow": 0.737, "jacob_cov": 0.731},
    "cifar100": {"grad_norm": 0.637, "snip": 0.637, "grasp": 0.547, "fisher": 0.385, "synflow": 0.763, "jacob_cov": 0.704},
    "ImageNet16-120": {"grad_norm": 0.578, "snip": 0.578, "grasp": 0.549, "fisher": 0.327, "synflow": 0.751, "jacob_cov": 0.701},
}
DATASETS = {  # num_classes, image size, column of nb201_200ep_test.csv
    "cifar10": (10, 32, "CIFAR10TestAccuracy200Epochs"),
    "cifar100": (100, 32, "CIFAR100TestAccuracy200Epochs"),
    "ImageNet16-120": (120, 16, "ImageNetTestAccuracy200Epochs"),
}


def _score_chunk(job: tuple[list[int], list[str], str]) -> list[tuple[int, str, float, int]]:
    indices, datasets, network = job
    import torch
    from torch import nn

    from nas.config import load_config
    from nas.proxies import ProxyInputs
    from nas.proxies.registry import build_proxy_backbone
    from nas.proxies.scores import synflow
    from nas.spaces import build_space
    from nas.tasks.base import LinearHead

    torch.set_num_threads(1)
    space = build_space(load_config(None)["space"])  # the benchmark's C=16, N=5
    rows = []
    for index in indices:
        arch = space.from_index(index)
        for dataset in datasets:
            classes, size, _ = DATASETS[dataset]
            torch.manual_seed(index)
            backbone = build_proxy_backbone(space, arch, 3, "synflow", network)  # as `nas proxies` builds it
            net = nn.Sequential(backbone, LinearHead(backbone.out_channels, classes))
            batch = ProxyInputs(torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.int64))
            rows.append((index, dataset, synflow(net, batch), space.cost(arch, classes, 3, size).params))
    return rows


def _truth_tables(folder: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(200-epoch test accuracies, cifar10-valid valid/test accuracies), in index order, in the published columns."""
    if folder is not None:
        return (pd.read_csv(folder / "nb201_200ep_test.csv"), pd.read_csv(folder / "nb201_cifar10-valid_200ep.csv"))
    from nas.groundtruth import nb201_table

    table = nb201_table()
    truth = table.rename(columns={"cifar10_test_200ep": DATASETS["cifar10"][2],
                                  "cifar100_test_200ep": DATASETS["cifar100"][2],
                                  "imagenet16_test_200ep": DATASETS["ImageNet16-120"][2]})
    valid = table.rename(columns={"cifar10valid_valid_200ep": "valid-accuracy", "cifar10valid_test_200ep": "test-accuracy"})
    return truth, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=None,
                        help="folder of the published CSV tables (default: the packaged table)")
    parser.add_argument("--limit", type=int, default=None, help="score a seeded sample of this many cells")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--scores", type=Path, help="also write every cell's scores to this CSV")
    parser.add_argument("--network", choices=["benchmark", "standalone"], default="benchmark",
                        help="the network scored, as the config key proxies.network")
    args = parser.parse_args()
    truth, valid_split = _truth_tables(args.tables)
    indices = list(range(len(truth)))
    if args.limit:
        indices = sorted(np.random.RandomState(0).choice(indices, args.limit, replace=False).tolist())
    started = time.time()
    chunks = [indices[i::args.workers * 8] for i in range(args.workers * 8)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        rows = [row for part in pool.map(_score_chunk, [(c, args.datasets, args.network) for c in chunks])
                for row in part]
    wall = time.time() - started
    scores = pd.DataFrame(rows, columns=["index", "dataset", "synflow", "params"])
    if args.scores:
        scores.to_csv(args.scores, index=False)
    print(f"NB201, {len(indices)} cells, {args.network} network, {args.workers} worker(s), wall time {wall:.0f} s")
    print(f"{'dataset':<16}{'proxy':<10}{'ours |rho|':>12}{'published':>11}{'diff':>8}   truth")
    for dataset in args.datasets:
        part = scores[scores.dataset == dataset].set_index("index").sort_index()
        truths = {DATASETS[dataset][2]: truth.loc[part.index, DATASETS[dataset][2]].to_numpy()}
        if dataset == "cifar10":  # the cifar10-valid split (25k train) that NB201 papers also report
            for column in ("valid-accuracy", "test-accuracy"):
                truths[f"cifar10-valid {column}"] = valid_split.loc[part.index, column].to_numpy()
        for name, accuracy in truths.items():
            for proxy in ("synflow", "params"):
                rho = abs(stats.spearmanr(part[proxy].to_numpy(), accuracy).statistic)
                published = PUBLISHED[dataset].get(proxy)
                shown = f"{published:>11.3f}{rho - published:>+8.3f}" if published is not None else f"{'-':>11}{'':>8}"
                print(f"{dataset:<16}{proxy:<10}{rho:>12.3f}{shown}   vs {name}")


if __name__ == "__main__":
    main()
