import math

import pytest
import torch
import torch.nn.functional as F

from mnist_net import augment
from mnist_net.data import Split, batches


def test_split_sizes(splits):
    sizes = {name: (len(s), tuple(s.images.shape), s.images.dtype) for name, s in splits.items()}
    assert sizes == {
        "train": (50_000, (50_000, 1, 28, 28), torch.uint8),
        "val": (10_000, (10_000, 1, 28, 28), torch.uint8),
        "train+val": (60_000, (60_000, 1, 28, 28), torch.uint8),
        "test": (10_000, (10_000, 1, 28, 28), torch.uint8),
    }
    assert set(splits["test"].labels.tolist()) == set(range(10))


def test_train_plus_val_is_train_then_val(splits):
    both, train, val = splits["train+val"], splits["train"], splits["val"]
    assert torch.equal(both.images, torch.cat([train.images, val.images]))
    assert torch.equal(both.labels, torch.cat([train.labels, val.labels]))
    assert not torch.equal(train.images[:10], splits["test"].images[:10])


def test_subset_is_seeded(splits):
    train = splits["train"]
    a, b, c = train.subset(500, seed=3), train.subset(500, seed=3), train.subset(500, seed=4)
    assert len(a) == 500 and a.images.shape == (500, 1, 28, 28)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    assert train.subset(None, seed=3) is train
    assert train.subset(10**9, seed=3) is train


def indexed(split: Split, n: int) -> Split:
    """The first n images, labelled with their own index so batches can be traced back."""
    return Split(split.images[:n], torch.arange(n))


def test_shuffled_batches_cover_every_index_once(splits):
    data = indexed(splits["train"], 300)
    seen, sizes = [], []
    gen = torch.Generator().manual_seed(0)
    for x, idx in batches(data, 64, generator=gen):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert torch.allclose(x, (data.images[idx].float() / 255 - augment.MEAN) / augment.STD)
        seen += idx.tolist()
        sizes.append(len(idx))
    assert sizes == [64, 64, 64, 64, 44]
    assert sorted(seen) == list(range(300))
    assert seen != list(range(300))  # actually shuffled


def test_batches_are_normalised(small):
    x = torch.cat([x for x, _ in batches(small("train", 2000), 500)])
    assert abs(x.mean().item()) < 0.05
    assert abs(x.std().item() - 1) < 0.05


def test_unaugmented_batches_are_plain_normalisation(small):
    data = small("val", 200)
    x = torch.cat([x for x, _ in batches(data, 64, augment=False)])
    y = torch.cat([y for _, y in batches(data, 64, augment=False)])
    want = (data.images.float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x, want, atol=1e-6)
    assert torch.equal(y, data.labels)


def test_augmented_batches_keep_shape_and_differ(small):
    data = small("val", 64)
    # Same seed -> same shuffle, so the two batches hold the same images in the same order.
    (x, _), = list(batches(data, 64, generator=torch.Generator().manual_seed(0)))
    (x_aug, _), = list(batches(data, 64, generator=torch.Generator().manual_seed(0), augment=True))
    assert x_aug.shape == x.shape and x_aug.dtype == torch.float32
    assert not torch.allclose(x_aug, x, atol=1e-3)


def augmented(x: torch.Tensor, **params) -> torch.Tensor:
    """x warped through one seeded random draw per image, as batches() augments a pass."""
    theta = augment.affine_params(len(x), torch.Generator().manual_seed(0), x.device, **params)
    return augment.warp(x, theta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augmentation_keeps_shape_and_dtype(small, dtype):
    x = small("val", 16).images.to(dtype) / 255
    out = augmented(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1 + 1e-6


def angles_and_scales(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    scale = torch.sqrt(theta[:, 0, 0] ** 2 + theta[:, 1, 0] ** 2)
    return angle, scale


def test_each_image_gets_its_own_angle(small):
    theta = augment.affine_params(64, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert theta.shape == (64, 2, 3)
    angle, _ = angles_and_scales(theta)
    assert len(set(angle.tolist())) == 64
    assert angle.abs().max() <= math.radians(15) + 1e-6
    assert angle.std() > math.radians(5)  # spread over +-15 degrees, not clustered

    # The same image eight times comes out eight different ways.
    x = small("val", 1).images.float().div(255).repeat(8, 1, 1, 1)
    out = augmented(x)
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j], atol=1e-3) for i in range(8) for j in range(i))


def test_about_ten_percent_are_cropped():
    theta = augment.affine_params(10_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    _, scale = angles_and_scales(theta)
    cropped = torch.isclose(scale, torch.tensor(22 / 28))
    assert torch.all(cropped | torch.isclose(scale, torch.tensor(1.0)))
    assert 0.085 < cropped.float().mean().item() < 0.115  # p = 0.1, sd 0.003


def test_no_crop_no_rotation_is_identity(small):
    x = small("val", 32).images.float() / 255
    out = augmented(x, crop_p=0.0, degrees=0.0)
    assert torch.allclose(out, x, atol=1e-5)


def test_crop_is_center_crop_22_resized_to_28(small):
    x = small("val", 8).images.float() / 255
    out = augmented(x, crop_p=1.0, degrees=0.0)
    want = F.interpolate(x[..., 3:25, 3:25], size=(28, 28), mode="bilinear", align_corners=False)
    # The outermost output pixels also blend in the ring just outside the crop; inside they agree.
    assert torch.allclose(out[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_do_not_depend_on_the_chunk_size(small, channels_last):
    """The pass's order and augmentation are drawn up front: chunking changes the calls, not the data."""
    data = small("train", 300)

    def run(chunk):
        gen = torch.Generator().manual_seed(7)
        return list(batches(data, 32, generator=gen, augment=True, channels_last=channels_last, chunk=chunk))

    default, one_batch, odd = run(None), run(32), run(100)  # 100 rounds down to 96 = 3 batches
    assert [len(y) for _, y in default] == [32] * 9 + [12]
    for other in (one_batch, odd):
        assert len(other) == len(default)
        for (x, y), (x2, y2) in zip(default, other, strict=True):
            assert torch.equal(y, y2) and torch.equal(x, x2)
    assert default[0][0].is_contiguous(memory_format=torch.channels_last if channels_last
                                       else torch.contiguous_format)


def test_augmented_batches_are_the_warp_of_the_shuffled_images(small):
    """One randperm, then one draw of every image's affine matrix, both from the pass's generator."""
    data = small("train", 100)
    gen = torch.Generator().manual_seed(3)
    got = list(batches(data, 40, generator=torch.Generator().manual_seed(3), augment=True))
    order = torch.randperm(100, generator=gen)
    theta = augment.affine_params(100, gen, torch.device("cpu"))
    want = (augment.warp(data.images[order].float() / 255, theta) - augment.MEAN) / augment.STD
    assert torch.allclose(torch.cat([x for x, _ in got]), want, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in got]), data.labels[order])
