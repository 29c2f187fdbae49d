"""Each label source's inputs and targets on hand-made images, and every task end to end through a TaskModel."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from kornia.color import rgb_to_lab

from nas.registry import ConfigError
from nas.spaces import build_space
from nas.tasks import TASKS, build_task, check_task_on_dataset
from nas.tasks.base import normalize
from nas.tasks.col import BinIndex, ColorizationHead, gamut_bins, nearest_bin
from nas.tasks.jig import permutation_set
from nas.tasks.rand import random_labels
from nas.tasks.rot import all_rotations
from nas.train import TaskModel

pytestmark = pytest.mark.usefixtures("single_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _task(cfg, info, name: str, *overrides: str, seed: int = 0):
    return build_task(cfg(f"task.name={name}", *overrides)["task"], info, seed)


# ---- rot -----------------------------------------------------------------------------------------------
def test_all_rotations_layout_and_labels():
    x = torch.arange(18, dtype=torch.float32).view(2, 1, 3, 3)
    rotated, labels = all_rotations(x)
    assert rotated.shape == (8, 1, 3, 3)
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    for i in range(2):
        for k in range(4):
            assert torch.equal(rotated[4 * i + k], torch.rot90(x[i], k, dims=(1, 2))), (i, k)
    # by hand: one quarter turn (counter-clockwise) of [[0,1,2],[3,4,5],[6,7,8]]
    assert rotated[1, 0].tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    assert rotated[2, 0].tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]
    assert torch.equal(rotated[0], x[0]) and torch.equal(rotated[4], x[1])


def test_rotation_prepare_eval(cfg, tiny_info):
    info = tiny_info(channels=3, image_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2), flip=True, crop_padding=2)
    task = _task(cfg, info, "rot")
    assert task.num_outputs == 4 and task.in_channels == 3
    images = torch.rand(3, 3, 8, 8, generator=_gen(1))
    inputs, targets = task.prepare(images, torch.zeros(3, dtype=torch.long), torch.arange(3), train=False,
                                   generator=_gen(0))
    assert inputs.shape == (12, 3, 8, 8)
    assert targets.tolist() == [0, 1, 2, 3] * 3
    mean = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    std = torch.tensor([0.5, 0.25, 0.2]).view(3, 1, 1)
    for i in range(3):
        for k in range(4):
            expected = (torch.rot90(images[i], k, dims=(1, 2)) - mean) / std
            assert torch.allclose(inputs[4 * i + k], expected, atol=1e-6)


# ---- col -----------------------------------------------------------------------------------------------
def test_gamut_bins_grid10():
    bins = gamut_bins(10.0)
    assert bins.shape == (261, 2)
    assert torch.equal(torch.remainder(bins, 10.0), torch.zeros_like(bins))  # all on the grid of 10
    assert len({tuple(b) for b in bins.tolist()}) == 261
    assert bins.tolist() == sorted(bins.tolist())
    assert [0.0, 0.0] in bins.tolist()
    # the sRGB gamut in Lab: a roughly in [-86, 98], b in [-108, 95]
    assert -90 <= bins[:, 0].min() <= -80 and 90 <= bins[:, 0].max() <= 100
    assert -110 <= bins[:, 1].min() <= -100 and 90 <= bins[:, 1].max() <= 100


def test_nearest_bin_by_hand():
    bins = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-20.0, -20.0]])
    # ab (1, 2, 2, 2): pixels (a, b) = (1, 2), (9, -1) / (2, 8), (-15, -14)
    a = torch.tensor([[1.0, 9.0], [2.0, -15.0]])
    b = torch.tensor([[2.0, -1.0], [8.0, -14.0]])
    ab = torch.stack([a, b]).unsqueeze(0)
    index = nearest_bin(ab, bins)
    assert index.shape == (1, 2, 2)
    assert index.tolist() == [[[0, 1], [2, 3]]]
    # batch of two: the second image swapped
    index2 = nearest_bin(torch.cat([ab, ab.flip(3)]), bins)
    assert index2.tolist() == [[[0, 1], [2, 3]], [[1, 0], [3, 2]]]


def test_colorization_targets_on_pure_colours(cfg, tiny_info):
    info = tiny_info(channels=3, image_size=8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    task = _task(cfg, info, "col")
    assert task.num_outputs == 261 and task.in_channels == 1
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    images = colours.view(5, 3, 1, 1).expand(5, 3, 8, 8).contiguous()
    inputs, targets = task.prepare(images, torch.zeros(5, dtype=torch.long), torch.arange(5), train=False,
                                   generator=_gen())
    assert inputs.shape == (5, 1, 8, 8)
    assert targets.shape == (5, 8, 8) and targets.dtype == torch.int64
    lab = rgb_to_lab(colours.view(5, 3, 1, 1))[:, :, 0, 0]
    # known Lab of pure sRGB primaries (D65)
    assert torch.allclose(lab[0], torch.tensor([53.24, 80.09, 67.20]), atol=0.1)
    assert torch.allclose(lab[1], torch.tensor([87.73, -86.18, 83.18]), atol=0.1)
    assert torch.allclose(lab[2], torch.tensor([32.30, 79.19, -107.86]), atol=0.1)
    for i in range(5):
        assert (targets[i] == targets[i, 0, 0]).all()
        centre = task.bins[targets[i, 0, 0]]
        assert torch.dist(centre, lab[i, 1:]) <= 10 * math.sqrt(2) / 2 + 1e-4, (colours[i], centre, lab[i])
    assert task.bins[targets[3, 0, 0]].tolist() == [0.0, 0.0]  # gray
    assert task.bins[targets[0, 0, 0]].tolist() == [80.0, 70.0]  # red
    # input: L/100 normalised with the mean of the RGB statistics
    expected_l = (lab[:, 0] / 100.0 - 0.5) / 0.3
    assert torch.allclose(inputs[:, 0, 0, 0], expected_l, atol=1e-4)


def test_colorization_head_output_shape(cfg, tiny_info, tmp_path):
    np.save(tmp_path / "bins.npy", np.array([[0.0, 0.0], [10.0, 10.0], [-10.0, 20.0]]))
    info = tiny_info(channels=3, image_size=12)
    task = _task(cfg, info, "col", f"task.col.bins_file={tmp_path / 'bins.npy'}")
    assert task.num_outputs == 3
    head = task.build_head(8)
    out = head(torch.randn(2, 8, 3, 3))
    assert out.shape == (2, 3, 12, 12)


@pytest.mark.parametrize("size_in,size_out", [((3, 3), (12, 12)), ((8, 5), (32, 20)), ((1, 4), (7, 9)), ((6, 6), (6, 6))])
def test_colorization_head_upsamples_as_bilinear_interpolation(size_in, size_out):
    # The head's two matrix products (deterministic backward on CUDA) must be F.interpolate's bilinear,
    # align_corners=True, values and gradients.
    head = ColorizationHead(5, 4, size_out).double()
    features = torch.randn(2, 5, *size_in, dtype=torch.float64, generator=_gen(3), requires_grad=True)
    ours = head(features)
    reference = torch.nn.functional.interpolate(head.classifier(features), size=size_out, mode="bilinear",
                                                align_corners=True)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    upstream = torch.randn(ours.shape, dtype=torch.float64, generator=_gen(4))
    (ours_grad,) = torch.autograd.grad(ours, features, upstream)
    (reference_grad,) = torch.autograd.grad(reference, features, upstream)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=1e-12)


def test_colorization_refuses_gray_dataset(cfg, tiny_info):
    info = tiny_info(name="graydigits", channels=1)
    with pytest.raises(ConfigError) as err:
        _task(cfg, info, "col")
    assert "'col'" in str(err.value) and "graydigits" in str(err.value)
    with pytest.raises(ConfigError, match="mnist5k"):
        check_task_on_dataset("col", "mnist5k")
    check_task_on_dataset("col", "cifar10")  # an RGB dataset is accepted


@pytest.mark.parametrize(
    "array,problem",
    [(np.zeros((3, 3)), "shape"), (np.zeros((4,)), "shape"), (np.zeros((1, 2)), "shape"), (None, "exist"),
     ("text", "readable")],
)
def test_colorization_bad_bins_file(cfg, tiny_info, tmp_path, array, problem):
    path = tmp_path / "bins.npy"
    if isinstance(array, np.ndarray):
        np.save(path, array)
    elif array == "text":
        path.write_text("this is not a numpy file\n")
    with pytest.raises(ConfigError, match=problem) as err:
        _task(cfg, tiny_info(channels=3), "col", f"task.col.bins_file={path}")
    assert "bins_file" in str(err.value)


# ---- jig -----------------------------------------------------------------------------------------------
def test_permutation_set_2x2_is_every_permutation():
    perms = permutation_set(2, 1000, 0)
    assert perms.shape == (24, 4)
    assert {tuple(p) for p in perms.tolist()} == set(itertools.permutations(range(4)))


def test_permutation_set_3x3_is_greedy_max_hamming():
    perms = permutation_set(3, 10, 0)
    assert perms.shape == (10, 9)
    rows = [tuple(p) for p in perms.tolist()]
    assert len(set(rows)) == 10
    assert all(sorted(r) == list(range(9)) for r in rows)
    distances = [(perms[i] != perms[j]).sum().item() for i in range(10) for j in range(i + 1, 10)]
    assert min(distances) >= 8
    # greedy property: each chosen permutation is as far as any permutation can be from those before it
    every = np.array(list(itertools.permutations(range(9))), dtype=np.int8)
    chosen = perms.numpy().astype(np.int8)
    min_dist = (every != chosen[0]).sum(axis=1)
    for j in range(1, 10):
        own = min((chosen[j] != chosen[i]).sum() for i in range(j))
        assert own == min_dist.max(), j
        min_dist = np.minimum(min_dist, (every != chosen[j]).sum(axis=1))
    assert torch.equal(permutation_set(3, 10, 0), perms)  # deterministic


def _quadrant_images(batch: int, size: int = 16) -> torch.Tensor:
    """Images whose tiles differ: random texture, each quadrant with its own offset."""
    images = torch.rand(batch, 3, size, size, generator=_gen(11)) * 0.3
    half = size // 2
    for k, (i, j) in enumerate(itertools.product(range(2), range(2))):
        images[:, :, i * half:(i + 1) * half, j * half:(j + 1) * half] += 0.1 * (k + 1)
    return images


def _standardise(t: torch.Tensor) -> torch.Tensor:
    """Per-channel standardisation of a (C, h, w) tile (tiles are normalised per channel, as in Noroozi & Favaro)."""
    return (t - t.mean(dim=(-2, -1), keepdim=True)) / t.std(dim=(-2, -1), keepdim=True)


def test_jigsaw_eval_placement_and_labels(cfg, tiny_info):
    info = tiny_info(channels=3, image_size=16, num_images=20)
    task = _task(cfg, info, "jig")
    assert (task.grid, task.cell, task.tile) == (2, 8, 6)
    assert task.num_outputs == 24 and task.num_tiles == 4
    images = _quadrant_images(3)
    ids = torch.tensor([4, 17, 9])
    inputs, labels = task.prepare(images, torch.zeros(3, dtype=torch.long), ids, train=False, generator=_gen(0))
    assert inputs.shape == (3, 4, 3, 6, 6)
    assert labels.tolist() == task.eval_perm[ids].tolist()
    offset = (task.cell - task.tile) // 2  # centred crop
    for b in range(3):
        perm = task.permutations[labels[b]].tolist()
        for k, (i, j) in enumerate(itertools.product(range(2), range(2))):
            crop = images[b, :, i * 8 + offset:i * 8 + offset + 6, j * 8 + offset:j * 8 + offset + 6]
            slot = perm[k]
            tile = inputs[b, slot]
            # each tile is normalised on its own: compare standardised versions
            assert torch.allclose(_standardise(tile), _standardise(crop), atol=1e-4), (b, k, slot)
            assert tile.mean(dim=(1, 2)).abs().max() < 1e-4  # zero mean per channel
    # the evaluation permutation is fixed per image: another generator, same result
    again, labels_again = task.prepare(images, torch.ones(3, dtype=torch.long), ids, train=False, generator=_gen(99))
    assert torch.equal(labels_again, labels) and torch.equal(again, inputs)
    # and it does not depend on the batch an image is in
    _, single = task.prepare(images[1:2], torch.zeros(1, dtype=torch.long), ids[1:2], train=False, generator=_gen(5))
    assert single.tolist() == labels[1:2].tolist()


def test_jigsaw_eval_permutations_vary_over_images(cfg, tiny_info):
    task = _task(cfg, tiny_info(channels=3, image_size=16, num_images=500), "jig")
    assert len(task.eval_perm) == 500
    assert len(set(task.eval_perm.tolist())) == 24
    assert task.eval_perm.min() >= 0 and task.eval_perm.max() < 24
    other = _task(cfg, tiny_info(channels=3, image_size=16, num_images=500), "jig")
    assert torch.equal(other.eval_perm, task.eval_perm)


def test_jigsaw_train_placement(cfg, tiny_info):
    """Training crops are random within each grid cell; slot perm[k] still holds a crop of grid cell k."""
    info = tiny_info(channels=3, image_size=16, num_images=8)
    task = _task(cfg, info, "jig", "task.jig.gray_prob=0")
    images = _quadrant_images(4)
    inputs, labels = task.prepare(images, torch.zeros(4, dtype=torch.long), torch.arange(4), train=True,
                                  generator=_gen(3))
    assert inputs.shape == (4, 4, 3, 6, 6)
    assert labels.min() >= 0 and labels.max() < 24
    slack = task.cell - task.tile
    for b in range(4):
        perm = task.permutations[labels[b]].tolist()
        for k, (i, j) in enumerate(itertools.product(range(2), range(2))):
            tile = _standardise(inputs[b, perm[k]])
            matches = [
                torch.allclose(tile, _standardise(images[b, :, i * 8 + dy:i * 8 + dy + 6, j * 8 + dx:j * 8 + dx + 6]),
                               atol=1e-4)
                for dy in range(slack + 1) for dx in range(slack + 1)
            ]
            assert any(matches), (b, k)
    again, labels_again = task.prepare(images, torch.zeros(4, dtype=torch.long), torch.arange(4), train=True,
                                       generator=_gen(3))
    assert torch.equal(labels_again, labels) and torch.equal(again, inputs)


def test_jigsaw_tiles_too_small(cfg, tiny_info):
    with pytest.raises(ConfigError, match="task.jig"):
        _task(cfg, tiny_info(channels=3, image_size=16), "jig", "task.jig.grid=3")


# ---- rand ----------------------------------------------------------------------------------------------
def test_random_labels_fixed_uniform_and_seeded(cfg, tiny_info):
    info = tiny_info(num_classes=10, num_images=10_000)
    task = _task(cfg, info, "rand", seed=3)
    ids = torch.arange(10_000)
    labels = task.targets(torch.zeros(10_000, dtype=torch.long), ids)
    assert labels.dtype == torch.int64 and labels.shape == (10_000,)
    assert labels.min() == 0 and labels.max() == 9
    counts = torch.bincount(labels, minlength=10)
    assert (counts > 850).all() and (counts < 1150).all(), counts
    # the true labels are ignored; an id always gets the same label
    assert torch.equal(task.targets(torch.full((10_000,), 7), ids), labels)
    shuffled = torch.randperm(10_000, generator=_gen(1))
    assert torch.equal(task.targets(torch.zeros(10_000, dtype=torch.long), shuffled), labels[shuffled])
    # reproducible with the same seed, different with another
    same = _task(cfg, info, "rand", seed=3).targets(torch.zeros(10_000, dtype=torch.long), ids)
    other = _task(cfg, info, "rand", seed=4).targets(torch.zeros(10_000, dtype=torch.long), ids)
    assert torch.equal(same, labels)
    assert (other != labels).float().mean() > 0.8
    assert torch.equal(labels, random_labels(10_000, 10, 3))
    # task.rand.label_seed overrides the job's seed
    pinned = _task(cfg, info, "rand", "task.rand.label_seed=3", seed=0)
    assert torch.equal(pinned.targets(torch.zeros(10_000, dtype=torch.long), ids), labels)


def test_random_labels_prepare(cfg, tiny_info):
    info = tiny_info(num_classes=5, num_images=40)
    task = _task(cfg, info, "rand", seed=1)
    assert task.num_outputs == 5
    images = torch.rand(4, 3, 16, 16, generator=_gen(2))
    ids = torch.tensor([3, 30, 3, 11])
    true_labels = torch.tensor([0, 1, 2, 3])
    inputs, targets = task.prepare(images, true_labels, ids, train=False, generator=_gen(0))
    assert torch.allclose(inputs, normalize(images, info))
    assert targets.tolist() == task.labels[ids].tolist()
    assert targets[0] == targets[2]


# ---- cls -----------------------------------------------------------------------------------------------
def test_classification_targets_and_augmentation(cfg, tiny_info):
    info = tiny_info(num_classes=10, channels=3, image_size=16, flip=True, crop_padding=4)
    task = _task(cfg, info, "cls")
    assert task.num_outputs == 10
    images = torch.rand(6, 3, 16, 16, generator=_gen(5))
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    ids = torch.arange(6)
    eval_a, t_a = task.prepare(images, labels, ids, train=False, generator=_gen(0))
    eval_b, t_b = task.prepare(images, labels, ids, train=False, generator=_gen(1))
    assert torch.equal(t_a, labels) and torch.equal(t_b, labels)
    assert torch.equal(eval_a, eval_b)
    assert torch.allclose(eval_a, (images - 0.5) / 0.25)
    train_a, t_train = task.prepare(images, labels, ids, train=True, generator=_gen(7))
    assert torch.equal(t_train, labels)
    assert train_a.shape == eval_a.shape
    assert not torch.allclose(train_a, eval_a)  # crops/flips moved pixels
    train_b, _ = task.prepare(images, labels, ids, train=True, generator=_gen(7))
    assert torch.equal(train_a, train_b)


# ---- every task through a TaskModel --------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,channels",
    [("cls", 1), ("cls", 3), ("rot", 1), ("rot", 3), ("jig", 1), ("jig", 3), ("rand", 3), ("col", 3)],
)
@pytest.mark.parametrize("supernet", [False, True])
def test_task_model_outputs_fit_loss_and_metric(cfg, tiny_info, tiny_space_cfg, tmp_path, name, channels, supernet):
    info = tiny_info(num_classes=6, channels=channels, image_size=16, num_images=12, flip=True, crop_padding=2)
    overrides = []
    if name == "col":  # a small bin set keeps the test fast; gamut bins are covered above
        np.save(tmp_path / "bins.npy", np.array([[0.0, 0.0], [50.0, 50.0], [-50.0, 50.0], [0.0, -60.0]]))
        overrides.append(f"task.col.bins_file={tmp_path / 'bins.npy'}")
    task = _task(cfg, info, name, *overrides, seed=0)
    assert name in TASKS
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=1))
    arch = (3, 1, 2, 4, 3, 1)
    backbone = space.build_supernet(task.in_channels) if supernet else space.build_network(arch, task.in_channels)
    model = TaskModel(backbone, task)
    batch = 3
    images = torch.rand(batch, channels, 16, 16, generator=_gen(4))
    labels = torch.tensor([0, 5, 2])
    ids = torch.tensor([0, 7, 11])
    expected_count = {"cls": batch, "rand": batch, "rot": 4 * batch, "jig": batch, "col": batch * 16 * 16}[name]
    expected_shape = {"col": (batch, task.num_outputs, 16, 16)}.get(name, (expected_count, task.num_outputs))
    for train in (True, False):
        model.train(train)
        inputs, targets = task.prepare(images, labels, ids, train=train, generator=_gen(1))
        outputs = model(inputs, arch=arch if supernet else None)
        assert outputs.shape == expected_shape
        loss = task.loss(outputs, targets)
        assert loss.dim() == 0 and torch.isfinite(loss)
        # an untrained head is close to uniform: loss near log(K)
        assert abs(loss.item() - math.log(task.num_outputs)) < 2.0
        hits, total = task.correct(outputs, targets)
        assert total == expected_count == targets.numel()
        assert 0 <= int(hits) <= total
        perfect = torch.nn.functional.one_hot(targets, task.num_outputs).movedim(-1, 1).float()
        assert int(task.correct(perfect, targets)[0]) == total
        if train:
            model.zero_grad()
            task.loss(outputs, targets, label_smoothing=0.1).backward()
            grads = [p.grad for p in model.head.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads)


# ---- col: the nearest-bin table against the distance search --------------------------------------------
def test_bin_index_equals_nearest_bin_on_8bit_colours():
    bins = gamut_bins(10.0)
    lookup = BinIndex(bins, 10.0)
    assert lookup.on_grid
    colours = torch.randint(0, 256, (8, 3, 16, 16), generator=_gen(3)).float() / 255.0
    ab = rgb_to_lab(colours)[:, 1:]
    assert torch.equal(lookup(ab), nearest_bin(ab, bins))


@pytest.mark.parametrize("offset", [0.0, 3.0])  # on the grid of 10 (sparse: most pixels fall back), off it
def test_bin_index_equals_nearest_bin_for_other_bin_sets(offset):
    bins = torch.tensor([[0.0, 0.0], [50.0, 50.0], [-50.0, 50.0], [0.0, -60.0], [10.0, 0.0]]) + offset
    lookup = BinIndex(bins, 10.0)
    assert lookup.on_grid == (offset == 0.0)
    ab = torch.randn(3, 2, 9, 9, generator=_gen(4)) * 60
    assert torch.equal(lookup(ab), nearest_bin(ab, bins))
