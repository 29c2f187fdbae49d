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


# ---- ImageNet16-120 from files of the official format ----------------------------------------------------
def _imagenet16_files(root, monkeypatch, train_counts=(2,) * 10, extra=3, seed=0):
    """The 11 pickles, each a dict of 'data' (N, 768) uint8 channel-planar rows and 1-indexed 'labels'.

    Classes 1..120 get ``train_counts[k]`` images in train file k (one each in val_data) and every file
    has ``extra`` images of classes above 120, which must be dropped. Image i of a file has the constant
    planes R = label, G = 200 + file number, B = i, so the decoding is checked pixel by pixel. The md5
    table is set to the written files (the real ones are only checked against the official sums).
    """
    import hashlib
    import pickle

    import numpy as np

    from nas.data import datasets

    rng = np.random.RandomState(seed)
    expected = {}
    names = [f"train_data_batch_{k}" for k in range(1, 11)] + ["val_data"]
    for number, name in enumerate(names):
        per_class = train_counts[number] if number < 10 else 1
        labels = [c for c in range(1, 121) for _ in range(per_class)] + list(rng.randint(121, 1001, extra))
        labels = [labels[i] for i in rng.permutation(len(labels))]
        values = (np.asarray(labels) % 256, np.full(len(labels), 200 + number), np.arange(len(labels)) % 256)
        planes = np.stack([np.repeat(v.astype(np.uint8)[:, None], 256, axis=1) for v in values], axis=1)
        entry = {"data": planes.reshape(len(labels), 768), "labels": [int(v) for v in labels]}
        (root / name).write_bytes(pickle.dumps(entry, protocol=2))
        expected[name] = (np.asarray(labels), planes)
    monkeypatch.setattr(datasets, "IMAGENET16_MD5",
                        {name: hashlib.md5((root / name).read_bytes()).hexdigest() for name in names})
    return expected


def _imagenet16_cfg(root, *overrides):
    from nas.config import load_config

    return load_config(None, ["dataset.name=imagenet16", f"dataset.root={root}", *overrides])["dataset"]


def test_imagenet16_keeps_120_classes_shifted_to_zero_and_val_data_is_the_test_split(tmp_path, monkeypatch):
    import numpy as np

    from nas.data import load_dataset

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    expected = _imagenet16_files(tmp_path, monkeypatch)
    data = load_dataset(_imagenet16_cfg(tmp_path))
    info = data.info
    assert (info.num_classes, info.channels, info.image_size) == (120, 3, 16)
    assert info.flip and info.crop_padding == 2  # RLNAS/NB201: flip + crop with 2 px padding at 16 px
    assert np.allclose(info.mean, np.array([122.68, 116.66, 104.01]) / 255)
    assert np.allclose(info.std, np.array([63.22, 61.26, 65.09]) / 255)

    train_ids = torch.cat([data.splits[s] for s in ("train", "valid", "search")]).sort().values
    assert len(train_ids) == 10 * 2 * 120 and torch.equal(train_ids, torch.arange(2400))
    assert torch.equal(data.splits["test"], torch.arange(2400, 2520))
    # file order, each file's order, images of classes > 120 dropped, labels 1..120 -> 0..119
    rows = [(labels, planes, number) for number, (labels, planes) in enumerate(expected.values())]
    want_labels = np.concatenate([labels[labels <= 120] - 1 for labels, _, _ in rows])
    assert torch.equal(data.labels, torch.from_numpy(want_labels))
    assert sorted(data.labels[:2400].tolist()) == sorted(list(range(120)) * 20)
    assert sorted(data.labels[2400:].tolist()) == list(range(120))
    want_planes = np.concatenate([planes[labels <= 120] for labels, planes, _ in rows])
    assert torch.equal(data.images, torch.from_numpy(want_planes.reshape(-1, 3, 16, 16)))
    assert torch.equal(data.images[:, 0, 5, 7].long(), data.labels + 1)  # R plane = 1-indexed label
    assert torch.equal(data.images[:2400, 1, 0, 0].unique(), torch.arange(200, 210, dtype=torch.uint8))

    again = load_dataset(_imagenet16_cfg(tmp_path))  # from the cache now
    assert len(list((tmp_path / "cache").glob("imagenet16-*.npz"))) == 1
    assert torch.equal(again.images, data.images) and again.fingerprint == data.fingerprint


@pytest.mark.parametrize("damage, message", [
    ("missing", "train_data_batch_7 not found"),
    ("md5", "not the official ImageNet16 file"),
    ("not_pickle", "is not an ImageNet16 pickle"),
    ("code", r"refers to \S*builtin\S*\.print"),
    ("no_labels", "a dict with 'data' and 'labels'"),
    ("shape", "rows of 16x16 RGB images"),
    ("label_range", "integers in 1..1000"),
])
def test_imagenet16_bad_files_are_named(tmp_path, monkeypatch, damage, message):
    import hashlib
    import pickle

    import numpy as np

    from nas.data import datasets, load_dataset
    from nas.registry import ConfigError

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    _imagenet16_files(tmp_path, monkeypatch, train_counts=(1,) * 10, extra=0)
    target = tmp_path / "train_data_batch_7"
    rows = np.zeros((4, 768), np.uint8)
    contents = {
        "not_pickle": b"these are not the pickles you are looking for",
        "code": pickle.dumps({"data": rows, "labels": [1, 2, 3, 4], "hook": print}, protocol=2),
        "no_labels": pickle.dumps({"data": rows}, protocol=2),
        "shape": pickle.dumps({"data": np.zeros((4, 3, 16, 16), np.uint8), "labels": [1, 2, 3, 4]}, protocol=2),
        "label_range": pickle.dumps({"data": rows, "labels": [0, 1, 2, 3]}, protocol=2),
    }
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(contents.get(damage, b"damaged" + target.read_bytes()))
        if damage != "md5":  # the md5 table accepts this file, so the format checks must refuse it
            monkeypatch.setitem(datasets.IMAGENET16_MD5, target.name, hashlib.md5(target.read_bytes()).hexdigest())
    with pytest.raises(ConfigError, match=message) as err:
        load_dataset(_imagenet16_cfg(tmp_path))
    assert "train_data_batch_7" in str(err.value) and "dataset.root" in str(err.value)
    assert not list((tmp_path / "cache").glob("*.npz"))


def test_imagenet16_needs_a_root(tmp_path):
    from nas.data import load_dataset
    from nas.registry import ConfigError

    with pytest.raises(ConfigError, match="dataset.root: dataset 'imagenet16' needs the folder"):
        load_dataset(_imagenet16_cfg(tmp_path, "dataset.root=null"))


# ---- photos8: crops of scikit-image's photographs ---------------------------------------------------------
def test_photos8_is_250_crops_of_each_of_8_photographs_deterministic(tmp_path, monkeypatch):
    import numpy as np

    from nas.config import load_config
    from nas.data import datasets, load_dataset

    cfg = load_config(None, ["dataset.name=photos8"])["dataset"]
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "a"))
    data = load_dataset(cfg)
    assert data.images.shape == (2000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert (data.info.num_classes, data.info.channels, data.info.flip, data.info.crop_padding) == (8, 3, True, 4)
    assert torch.equal(data.labels, torch.arange(8).repeat_interleave(250))
    assert "test" not in data.splits and sum(len(v) for v in data.splits.values()) == 2000
    # colour photographs: the channels differ, and every crop has content (no flat patch)
    per_image = data.images.float()
    assert (per_image[:, 0] - per_image[:, 2]).abs().mean() > 20
    assert per_image.std(dim=(1, 2, 3)).min() > 5
    # the label is the photograph: the deep field is the dark class, the retina the red one, the dusk launch the blue one
    means = torch.stack([per_image[data.labels == c].mean(dim=(0, 2, 3)) for c in range(8)])
    assert datasets.PHOTOS[int(means.sum(1).argmin())] == "hubble_deep_field.jpg"
    assert datasets.PHOTOS[int((means[:, 0] - means[:, 2]).argmax())] == "retina.jpg"
    assert datasets.PHOTOS[int((means[:, 2] - means[:, 0]).argmax())] == "rocket.jpg"

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "b"))  # decoded afresh: the same crops
    fresh = load_dataset(cfg)
    assert torch.equal(fresh.images, data.images) and fresh.fingerprint == data.fingerprint
    assert len(list((tmp_path / "b").glob("photos8-*.npz"))) == 1
    small = load_dataset(load_config(None, ["dataset.name=photos8", "dataset.image_size=16",
                                            "dataset.limit=500"])["dataset"])
    assert small.images.shape == (500, 3, 16, 16) and set(small.labels.tolist()) == set(range(8))
    assert np.isclose(small.info.mean[0], small.images[small.splits["train"], 0].float().mean() / 255)
