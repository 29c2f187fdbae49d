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
from nas.data import augment
from nas.tasks.col import BinIndex, ColorizationHead, gamut_bins, nearest_bin, zhang_bins
from nas.tasks.jig import GRAY_WEIGHTS, permutation_set
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


@pytest.mark.parametrize("bins,count,grid", [("zhang313", 313, 10.0), ("srgb_gamut", 261, 10.0)])
def test_colorization_targets_on_pure_colours(cfg, tiny_info, bins, count, grid):
    info = tiny_info(channels=3, image_size=8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    task = _task(cfg, info, "col", f"task.col.bins={bins}")
    assert task.num_outputs == count and task.in_channels == 1
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
        assert torch.dist(centre, lab[i, 1:]) <= grid * math.sqrt(2) / 2 + 1e-4, (colours[i], centre, lab[i])
    assert task.bins[targets[3, 0, 0]].tolist() == [0.0, 0.0]  # gray
    assert task.bins[targets[0, 0, 0]].tolist() == [80.0, 70.0]  # red (80.09, 67.20)
    assert task.bins[targets[1, 0, 0]].tolist() == [-90.0, 80.0]  # green (-86.18, 83.18)
    assert task.bins[targets[2, 0, 0]].tolist() == [80.0, -110.0]  # blue (79.19, -107.86)
    # input: L/100 normalised with the mean of the RGB statistics
    expected_l = (lab[:, 0] / 100.0 - 0.5) / 0.3
    assert torch.allclose(inputs[:, 0, 0, 0], expected_l, atol=1e-4)


def test_colorization_head_output_shape(cfg, tiny_info, tmp_path):
    np.save(tmp_path / "bins.npy", np.array([[0.0, 0.0], [10.0, 10.0], [-10.0, 20.0]]))
    info = tiny_info(channels=3, image_size=12)
    task = _task(cfg, info, "col", "task.col.bins=file", f"task.col.bins_file={tmp_path / 'bins.npy'}")
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
        _task(cfg, tiny_info(channels=3), "col", "task.col.bins=file", f"task.col.bins_file={path}")
    assert "bins_file" in str(err.value)


# UnNAS's colorization constants: pycls's CIFAR-10 mean and SD (0-255 scale, prepare_col uses their means)
PYCLS_CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
PYCLS_CIFAR_SD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def test_zhang313_bins_load_in_the_original_order():
    bins = zhang_bins()
    assert bins.shape == (313, 2) and bins.dtype == torch.float32
    assert bins[0].tolist() == [-90.0, 50.0] and bins[-1].tolist() == [100.0, 0.0]
    assert len({tuple(b) for b in bins.tolist()}) == 313
    assert bins.tolist() == sorted(bins.tolist())  # by a, then b
    assert torch.equal(torch.remainder(bins, 10.0), torch.zeros_like(bins))
    assert BinIndex(bins, 10.0).on_grid


@pytest.mark.parametrize("ab,centre", [
    ((1.2, -3.7), (0.0, 0.0)),       # its grid point (0, 0) is a bin
    ((44.9, 5.1), (40.0, 10.0)),     # rounds to (40, 10), a bin
    ((-93.0, 44.0), (-90.0, 50.0)),  # grid point (-90, 40) is no bin; (-90, 50) at 6.7, (-80, 40) at 13.6
    # far outside the gamut: squared distances to the nearest candidates worked out on the bin table
    ((150.0, 150.0), (90.0, 70.0)),     # (90, 70): 10000; (80, 70), (70, 80): 11300; (100, 0): 25000
    ((-150.0, -150.0), (-40.0, -40.0)),  # (-40, -40): 24200; (-50, -30), (-30, -50): 24400
    ((120.0, -130.0), (90.0, -110.0)),   # (90, -110): 1300; (100, -90): 1600; (80, -110): 2000
])
def test_zhang313_nearest_bin_by_hand(ab, centre):
    bins = zhang_bins()
    point = torch.tensor(ab).view(1, 2, 1, 1)
    for index in (BinIndex(bins, 10.0)(point), nearest_bin(point, bins)):
        assert bins[index.item()].tolist() == list(centre)


def test_colorization_defaults_are_unnas(cfg, tiny_info):
    task = _task(cfg, tiny_info(channels=3), "col")
    assert task.num_outputs == 313 and torch.equal(task.bins, zhang_bins())
    assert task.describe()["bins"] == "zhang313" and task.crop is False


@pytest.mark.parametrize("overrides", [["task.col.bins=file"], ["task.col.bins_file=/x.npy"],
                                       ["task.col.bins=srgb_gamut", "task.col.bins_file=/x.npy"]])
def test_colorization_bins_file_only_with_bins_file(cfg, tiny_info, overrides):
    with pytest.raises(ConfigError, match="task.col.bins"):
        _task(cfg, tiny_info(channels=3), "col", *overrides)


def test_colorization_l_input_is_unnas_normalisation(cfg, tiny_info):
    """prepare_col: (L / 100 - mean(MEAN)) / mean(SD), with L of the CIE Lab of the 8-bit image."""
    info = tiny_info(channels=3, image_size=8, mean=PYCLS_CIFAR_MEAN, std=PYCLS_CIFAR_SD)
    task = _task(cfg, info, "col")
    images = torch.randint(0, 256, (2, 3, 8, 8), generator=_gen(6)).float() / 255.0
    inputs, _ = task.prepare(images, torch.zeros(2, dtype=torch.long), torch.arange(2), train=False, generator=_gen())
    lightness = rgb_to_lab(images)[:, :1]
    # by hand: mean(MEAN) = 362.2 / 765 = 0.473464, mean(SD) = 191.8 / 765 = 0.250719
    expected = (lightness / 100.0 - 0.473464) / 0.250719
    torch.testing.assert_close(inputs, expected, rtol=0, atol=1e-4)


def test_kornia_lab_agrees_with_skimage_rgb2lab():
    """UnNAS converts with skimage.color.rgb2lab; over all 256^3 8-bit colours kornia's float32 Lab was measured
    within 7e-5 of it (L 1.8e-5, a 6.9e-5, b 3.5e-5), and 31 of the 16.8M colours fell in another of the 313 bins
    (ties at float32 precision). Here: 20,000 random colours and the corners of the cube, to 2e-4."""
    color = pytest.importorskip("skimage.color")
    colours = torch.randint(0, 256, (20_000, 3), generator=_gen(8), dtype=torch.uint8)
    corners = torch.tensor(list(itertools.product([0, 255], repeat=3)), dtype=torch.uint8)
    colours = torch.cat([colours, corners])
    theirs = color.rgb2lab(colours.numpy().reshape(1, -1, 3)).reshape(-1, 3)
    ours = rgb_to_lab(colours.T.float().view(1, 3, -1, 1) / 255.0).view(3, -1).T.double().numpy()
    assert np.abs(ours - theirs).max() < 2e-4


def test_colorization_and_jigsaw_flip_without_crop_by_default(cfg, tiny_info):
    """UnNAS on CIFAR: col and jig flip only; cls (and rot) also pad-and-crop; task.<col|jig>.crop restores the crop."""
    info = tiny_info(channels=3, image_size=16, flip=True, crop_padding=4)
    images = torch.rand(32, 3, 16, 16, generator=_gen(9))

    def moved(task) -> torch.Tensor:
        out = task.augment(images, _gen(2))
        same_or_mirror = [torch.equal(o, x) or torch.equal(o, x.flip(2)) for o, x in zip(out, images)]
        return torch.tensor(same_or_mirror)

    for name in ("col", "jig"):
        kept = moved(_task(cfg, info, name))
        assert kept.all(), name
        assert not moved(_task(cfg, info, name, f"task.{name}.crop=true")).all(), name
    flips = [torch.equal(o, x.flip(2)) for o, x in zip(_task(cfg, info, "col").augment(images, _gen(2)), images)]
    assert 4 < sum(flips) < 28  # about half flipped
    assert not moved(_task(cfg, info, "cls")).all()


def test_pycls_crop_style_pads_with_the_normalised_zero(cfg, tiny_info):
    """UnNAS's CIFAR pad-and-crop (prepare_im): normalise, flip, then pad 4 with zeros and crop at randint(0, 8).

    Each augmented image must be a crop of the flipped-or-not image padded with the dataset mean (the value
    normalising maps to 0) at an offset in 0..2p-1, never 2p; every such offset turns up."""
    pad = 2
    mean = (0.1, 0.2, 0.3)
    info = tiny_info(channels=3, image_size=8, mean=mean, std=(0.5, 0.25, 0.2), flip=True, crop_padding=pad)
    task = _task(cfg, info, "cls", "task.crop_style=pycls")
    images = torch.rand(200, 3, 8, 8, generator=_gen(12))
    out = task.augment(images, _gen(13))
    assert torch.equal(out, augment(images, info, _gen(13), style="pycls"))
    fill = torch.tensor(mean).view(3, 1, 1)
    seen, flipped = set(), 0
    for image, result in zip(images, out):
        found = []
        for mirrored in (False, True):
            source = image.flip(2) if mirrored else image  # pycls flips before padding and cropping
            padded = fill.expand(3, 8 + 2 * pad, 8 + 2 * pad).clone()
            padded[:, pad:pad + 8, pad:pad + 8] = source
            found += [(y, x, mirrored) for y in range(2 * pad + 1) for x in range(2 * pad + 1)
                      if torch.equal(padded[:, y:y + 8, x:x + 8], result)]
        assert found, "not a crop of the mean-padded image"
        seen.update((y, x) for y, x, _ in found)
        flipped += any(m for _, _, m in found)
    assert seen == {(y, x) for y in range(2 * pad) for x in range(2 * pad)}
    assert 60 < flipped < 140
    normalised = normalize(out, info)
    assert (normalised == 0).any()  # the border is exactly the normalised 0


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


def test_jigsaw_eval_placement_and_labels_with_fixed_centred_tiles(cfg, tiny_info):
    """The project's earlier evaluation: centred tiles, one permutation per image, each channel standardised."""
    info = tiny_info(channels=3, image_size=16, num_images=20)
    task = _task(cfg, info, "jig", "task.jig.test_perm=fixed", "task.jig.test_offsets=centre",
                 "task.jig.tile_norm=channel")
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


def _unnas_tile(crop: torch.Tensor, mean, std) -> torch.Tensor:
    """prepare_jig's tile: the crop normalised per channel with the dataset statistics, then (t - np.mean(t)) / np.std(t)."""
    t = (crop.double().numpy() - np.array(mean).reshape(-1, 1, 1)) / np.array(std).reshape(-1, 1, 1)
    return torch.from_numpy((t - np.mean(t)) / np.std(t))


def test_jigsaw_tiles_normalised_as_unnas(cfg, tiny_info):
    """Dataset normalisation, then one mean and population std per whole tile (not per channel)."""
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    info = tiny_info(channels=3, image_size=16, num_images=20, mean=mean, std=std)
    task = _task(cfg, info, "jig", "task.jig.test_perm=fixed", "task.jig.test_offsets=centre")
    images = _quadrant_images(3)
    ids = torch.tensor([4, 17, 9])
    inputs, labels = task.prepare(images, torch.zeros(3, dtype=torch.long), ids, train=False, generator=_gen(0))
    offset = (task.cell - task.tile) // 2
    for b in range(3):
        perm = task.permutations[labels[b]].tolist()
        for k, (i, j) in enumerate(itertools.product(range(2), range(2))):
            crop = images[b, :, i * 8 + offset:i * 8 + offset + 6, j * 8 + offset:j * 8 + offset + 6]
            torch.testing.assert_close(inputs[b, perm[k]].double(), _unnas_tile(crop, mean, std), rtol=0, atol=1e-5)
    assert inputs.mean(dim=(2, 3, 4)).abs().max() < 1e-5
    assert (inputs.std(dim=(2, 3, 4), unbiased=False) - 1).abs().max() < 1e-5
    assert inputs.mean(dim=(3, 4)).abs().max() > 0.1  # the channels keep their own levels
    # a constant tile (UnNAS: 0 / 0) comes out as zeros, not NaN
    flat, _ = task.prepare(torch.full((1, 3, 16, 16), 0.5), torch.zeros(1, dtype=torch.long), ids[:1], train=False,
                           generator=_gen(0))
    assert torch.isfinite(flat).all()
    # per channel (the earlier rule) cancels the dataset statistics
    per_channel = _task(cfg, info, "jig", "task.jig.test_perm=fixed", "task.jig.test_offsets=centre",
                        "task.jig.tile_norm=channel")
    other, _ = per_channel.prepare(images, torch.zeros(3, dtype=torch.long), ids, train=False, generator=_gen(0))
    assert other.mean(dim=(3, 4)).abs().max() < 1e-4


def test_jigsaw_gray_uses_skimage_weights(cfg, tiny_info):
    """Gray images as skimage.color.rgb2gray (0.2125 R + 0.7154 G + 0.0721 B), before the dataset normalisation."""
    assert GRAY_WEIGHTS["skimage"] == (0.2125, 0.7154, 0.0721)
    color = pytest.importorskip("skimage.color")
    assert np.allclose(color.rgb2gray(np.eye(3).reshape(1, 3, 3)).ravel(), GRAY_WEIGHTS["skimage"], atol=1e-12)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    info = tiny_info(channels=3, image_size=16, num_images=8, mean=mean, std=std)
    images = _quadrant_images(2)
    for weights in ("skimage", "rec601"):
        task = _task(cfg, info, "jig", "task.jig.gray_prob=1", f"task.jig.gray_weights={weights}")
        inputs, labels = task.prepare(images, torch.zeros(2, dtype=torch.long), torch.arange(2), train=True,
                                      generator=_gen(3))
        luma = (images * torch.tensor(GRAY_WEIGHTS[weights]).view(1, 3, 1, 1)).sum(1, True).expand(-1, 3, -1, -1)
        slack = task.cell - task.tile
        for b in range(2):
            perm = task.permutations[labels[b]].tolist()
            for k, (i, j) in enumerate(itertools.product(range(2), range(2))):
                tile = inputs[b, perm[k]].double()
                found = [torch.allclose(tile, _unnas_tile(luma[b, :, i * 8 + dy:i * 8 + dy + 6, j * 8 + dx:j * 8 + dx + 6],
                                                           mean, std), atol=1e-5)
                         for dy in range(slack + 1) for dx in range(slack + 1)]
                assert any(found), (weights, b, k)


def test_jigsaw_evaluation_redraws_offsets_and_permutations(cfg, tiny_info):
    """UnNAS draws the permutation and every tile's offset at test time too; the earlier options fix both."""
    info = tiny_info(channels=3, image_size=16, num_images=20)
    images, ids = _quadrant_images(8), torch.arange(8)
    task = _task(cfg, info, "jig")
    assert (task.test_perm, task.test_offsets) == ("redraw", "random")
    first, labels_first = task.prepare(images, torch.zeros(8, dtype=torch.long), ids, train=False, generator=_gen(1))
    second, labels_second = task.prepare(images, torch.zeros(8, dtype=torch.long), ids, train=False, generator=_gen(2))
    assert not torch.equal(labels_first, labels_second)
    again, labels_again = task.prepare(images, torch.zeros(8, dtype=torch.long), ids, train=False, generator=_gen(1))
    assert torch.equal(again, first) and torch.equal(labels_again, labels_first)  # the generator decides
    # random offsets: with the permutation fixed, tiles still differ between two generators
    fixed = _task(cfg, info, "jig", "task.jig.test_perm=fixed")
    a, la = fixed.prepare(images, torch.zeros(8, dtype=torch.long), ids, train=False, generator=_gen(1))
    b, lb = fixed.prepare(images, torch.zeros(8, dtype=torch.long), ids, train=False, generator=_gen(2))
    assert torch.equal(la, lb) and not torch.equal(a, b)
    centred = _task(cfg, info, "jig", "task.jig.test_perm=fixed", "task.jig.test_offsets=centre")
    c, _ = centred.prepare(images, torch.zeros(8, dtype=torch.long), ids, train=False, generator=_gen(1))
    d, _ = centred.prepare(images, torch.zeros(8, dtype=torch.long), ids, train=False, generator=_gen(2))
    assert torch.equal(c, d)


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
        overrides += ["task.col.bins=file", f"task.col.bins_file={tmp_path / 'bins.npy'}"]
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


# ---- rand on ImageNet16-120, and col / jig on the embedded colour dataset -------------------------------
@pytest.mark.parametrize("seed", [0, 1, 777])
def test_random_labels_equal_rlnas_imagenet16_labels_as_its_loader_serves_them(cfg, tiny_info, seed):
    """RLNAS: np.random.seed(s); randint(1, 121, 151700) on the train set; ImageNet16's loader serves label - 1."""
    np.random.seed(seed)
    served = np.random.randint(1, 121, 151_700) - 1
    ours = random_labels(151_700 + 6_000, 120, seed)  # our draw also covers the 6,000 test images, after them
    assert torch.equal(ours[:151_700], torch.from_numpy(served.astype(np.int64)))
    task = _task(cfg, tiny_info(name="imagenet16", num_classes=120, num_images=157_700), "rand", seed=seed)
    assert task.num_outputs == 120  # RLNAS's classifier: class_num = 120
    targets = task.targets(torch.zeros(4, dtype=torch.long), torch.tensor([0, 5, 151_699, 157_699]))
    assert torch.equal(targets[:3], torch.from_numpy(served[[0, 5, 151_699]].astype(np.int64)))
    assert int(ours.min()) == 0 and int(ours.max()) == 119


@pytest.fixture(scope="module")
def photos8_16px():
    from nas.config import load_config
    from nas.data import load_dataset

    return load_dataset(load_config(None, ["dataset.name=photos8", "dataset.image_size=16",
                                           "dataset.limit=96"])["dataset"])


@pytest.mark.parametrize("name", ["col", "jig"])
def test_col_and_jig_train_a_step_on_photos8(cfg, tiny_space_cfg, photos8_16px, name):
    data = photos8_16px
    check_task_on_dataset(name, "photos8")
    task = _task(cfg, data.info, name)
    if name == "jig":
        assert (task.grid, task.cell, task.tile) == (2, 8, 6)  # 2x2 grid, tiles >= 4 px at 16 px
    space = build_space(tiny_space_cfg(channels=4, cells_per_stage=1))
    arch = (3, 1, 2, 4, 3, 1)
    model = TaskModel(space.build_network(arch, task.in_channels), task)
    ids = data.splits["train"][:8]
    images = data.images[ids].float() / 255.0
    inputs, targets = task.prepare(images, data.labels[ids], ids, train=True, generator=_gen(0))
    if name == "col":  # real colour photographs: many ab bins per batch (a gray image has one)
        assert inputs.shape == (8, 1, 16, 16) and targets.shape == (8, 16, 16)
        assert len(targets.unique()) >= 20
    loss = task.loss(model(inputs), targets)
    assert torch.isfinite(loss)
    model.zero_grad()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters() if p.grad is not None)
