"""Batched augmentation against a plain per-image crop-then-flip, and batching from the in-memory tensor."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nas.data import ImageData, augment, iterate_batches

pytestmark = pytest.mark.usefixtures("single_thread")


def _per_image_reference(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad, crop at the drawn offset, then flip, one image at a time; draws: rows, columns, flips."""
    batch, _, height, width = images.shape
    still = torch.zeros(batch, dtype=torch.long)
    offset_y = torch.randint(0, 2 * pad + 1, (batch,), generator=generator) if pad else still
    offset_x = torch.randint(0, 2 * pad + 1, (batch,), generator=generator) if pad else still
    flips = torch.rand(batch, generator=generator) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool)
    out = []
    for image, dy, dx, mirrored in zip(images, offset_y.tolist(), offset_x.tolist(), flips.tolist()):
        crop = F.pad(image, (pad, pad, pad, pad))[:, dy:dy + height, dx:dx + width]
        out.append(crop.flip(2) if mirrored else crop)
    return torch.stack(out)


@pytest.mark.parametrize("pad,flip,channels,size",
                         list(itertools.product([0, 1, 4], [False, True], [1, 3], [(8, 8), (6, 10)])))
def test_augment_equals_per_image_crop_then_flip(tiny_info, pad, flip, channels, size):
    info = tiny_info(channels=channels, image_size=size[0], flip=flip, crop_padding=pad)
    images = torch.rand(9, channels, *size, generator=torch.Generator().manual_seed(1))
    got_gen, ref_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    got = augment(images, info, got_gen)
    expected = _per_image_reference(images, pad, flip, ref_gen)
    assert torch.equal(got, expected)  # pixels are copied, never computed: exactly equal
    assert torch.equal(got_gen.get_state(), ref_gen.get_state())  # same draws, so a seed keeps its meaning


def test_augment_moves_pixels_and_pads_with_zeros(tiny_info):
    info = tiny_info(channels=3, image_size=8, flip=True, crop_padding=4)
    images = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(2)) + 1.0  # no zeros inside images
    out = augment(images, info, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert (out == 0).any()  # some crops reach into the padding
    assert not torch.equal(out, images)


def test_iterate_batches_covers_the_split_once(tiny_info):
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    data = ImageData(images=images, labels=torch.arange(10), info=tiny_info(channels=1, num_images=10),
                     splits={"train": torch.tensor([1, 3, 4, 6, 8, 9, 0])})
    seen = []
    for batch, labels, ids in iterate_batches(data, "train", 3, shuffle=True,
                                              generator=torch.Generator().manual_seed(0)):
        assert torch.equal(labels, ids) and torch.equal(batch[:, 0, 0, 0].long(), ids)
        seen.extend(ids.tolist())
    assert sorted(seen) == [0, 1, 3, 4, 6, 8, 9]
    dropped = [len(ids) for _, _, ids in iterate_batches(data, "train", 3, shuffle=False, drop_last=True)]
    assert dropped == [3, 3]


def test_the_packaged_dataset_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch, capsys):
    from nas.config import load_config
    from nas.data import load_dataset

    cfg = load_config(None, ["dataset.limit=300"])["dataset"]
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    first = load_dataset(cfg)
    (cached,) = (tmp_path / "cache").glob("mnist5k-*.npz")
    second = load_dataset(cfg)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.fingerprint == second.fingerprint

    cached.write_bytes(b"not an npz file")  # damaged: decoded again and rewritten
    assert torch.equal(first.images, load_dataset(cfg).images)
    assert "cannot be read" in capsys.readouterr().out
    assert torch.equal(first.images, load_dataset(cfg).images) and not capsys.readouterr().out

    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "blocked"))
    third = load_dataset(cfg)
    assert torch.equal(first.images, third.images)
    assert "cannot cache the decoded mnist5k" in capsys.readouterr().out
