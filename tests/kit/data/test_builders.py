"""Embedded digits, the train/test split, BlockMNIST and the spurious-shortcut builder."""
import math

import pytest
import torch

from margreg_fast.kit.data import (ImageDataset, load_digits_images, load_mnist5k, make_blockmnist, make_spurious, null_patch,
                               patch_layout, split_train_test)


@pytest.fixture(scope="module")
def digits():
    return load_digits_images()


def binomial_tol(n: int, p: float) -> float:
    """Five standard deviations of a binomial proportion: a false failure has probability < 1e-6."""
    return 5 * math.sqrt(p * (1 - p) / n)


def test_load_digits(digits):
    x, y = digits
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert torch.all(torch.round(x * 16) == x * 16)  # source values are the integers 0..16
    assert sorted(y.unique().tolist()) == list(range(10))


def test_split_train_test(digits):
    x, y = digits
    (xtr, ytr), (xte, yte) = split_train_test(x, y, test_fraction=0.25, seed=3)
    assert len(yte) == round(0.25 * 1797) and len(ytr) + len(yte) == 1797
    # a partition of the original images: each image appears exactly once
    joined = torch.cat([xtr, xte]).flatten(1)
    assert torch.equal(joined.sum(0), x.flatten(1).sum(0)) and torch.equal(torch.cat([ytr, yte]).bincount(), y.bincount())
    (xtr2, _), _ = split_train_test(x, y, test_fraction=0.25, seed=3)
    (xtr3, _), _ = split_train_test(x, y, test_fraction=0.25, seed=4)
    assert torch.equal(xtr, xtr2) and not torch.equal(xtr, xtr3)
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(x, y, test_fraction=1.0, seed=0)


def test_a_prefix_of_the_evaluation_set_is_a_random_sample():
    """The shipped digit sets are sorted by label; the evaluated images (the first ``eval_samples`` of the
    evaluation set, also after ``max_test``) must still cover every class in about equal numbers."""
    from margreg_fast.kit.experiments.config import ExperimentConfig
    from margreg_fast.kit.experiments.datasets import build_datasets

    x, y = load_mnist5k()
    assert torch.equal(y, y.sort().values)  # the source order that made prefixes one-class
    for cfg in (ExperimentConfig(), ExperimentConfig(max_test=400), ExperimentConfig(split="validation")):
        _, test = build_datasets(cfg, seed=0)
        counts = test.y[:200].bincount(minlength=10)
        assert (counts >= 5).all(), counts.tolist()  # 20 expected per class (sd 4.2); before: 200 zeros


def test_null_patch_is_square_with_cross():
    p = null_patch(8, 8)
    assert p.shape == (8, 8) and set(p.unique().tolist()) == {0.0, 1.0}
    # border of the block is empty, the inset square (rows/cols 1 and 6) and both diagonals are lit
    assert p[0].sum() == 0 and p[-1].sum() == 0 and p[:, 0].sum() == 0 and p[:, -1].sum() == 0
    assert torch.all(p[1, 1:7] == 1) and torch.all(p[6, 1:7] == 1) and torch.all(p[1:7, 1] == 1) and torch.all(p[1:7, 6] == 1)
    assert all(p[i, i] == 1 and p[i, 7 - i] == 1 for i in range(1, 7))
    assert torch.equal(p, p.flip(0)) and torch.equal(p, p.flip(1))
    with pytest.raises(ValueError, match="4x4"):
        null_patch(3, 8)


def test_blockmnist(digits):
    x, y = digits
    ds = make_blockmnist(x, y, seed=0)
    assert isinstance(ds, ImageDataset) and ds.x.shape == (1797, 1, 16, 8) and ds.x.dtype == torch.float32
    assert torch.equal(ds.y, y)  # the label is unaffected
    top = ds.group == 0
    patch = null_patch(8, 8)
    # null block holds exactly the fixed patch, digit block exactly the digit
    assert torch.equal(ds.x[top, :, 8:], patch.expand(int(top.sum()), 1, 8, 8))
    assert torch.equal(ds.x[top, :, :8], x[top])
    assert torch.equal(ds.x[~top, :, :8], patch.expand(int((~top).sum()), 1, 8, 8))
    assert torch.equal(ds.x[~top, :, 8:], x[~top])
    # null_mask: True exactly on the null block
    assert ds.null_mask.dtype == torch.bool and ds.null_mask.shape == ds.x.shape
    assert torch.all(ds.null_mask[top, :, 8:]) and not torch.any(ds.null_mask[top, :, :8])
    assert torch.all(ds.null_mask[~top, :, :8]) and not torch.any(ds.null_mask[~top, :, 8:])
    # random order, a fair coin per image
    frac = top.float().mean().item()
    assert abs(frac - 0.5) < binomial_tol(1797, 0.5)
    for digit in range(10):  # both orders occur for every class: order is independent of the label
        assert 0 < top[y == digit].sum() < (y == digit).sum()
    assert torch.equal(make_blockmnist(x, y, seed=0).x, ds.x)
    assert not torch.equal(make_blockmnist(x, y, seed=1).group, ds.group)


def test_spurious_train_agreement_and_groups(digits):
    x, y = digits
    ds = make_spurious(x, y, seed=0, train=True)
    p, per_row, band = patch_layout(8, 8, 10)
    assert (p, per_row, band) == (1, 8, 2)
    assert ds.x.shape == (1797, 1, 10, 8) and torch.equal(ds.x[:, :, :8], x) and torch.equal(ds.y, y)
    lit = ds.x[:, 0, 8:, :].flatten(1)
    assert torch.all(lit.sum(1) == 1)  # exactly one patch pixel per image
    patch_class = lit.argmax(1)
    assert torch.equal(ds.group, y * 10 + patch_class)
    agree = (patch_class == y).float().mean().item()
    assert abs(agree - 0.95) < binomial_tol(1797, 0.95)
    wrong = patch_class[patch_class != y]
    assert len(wrong.unique()) == 10  # disagreeing patches spread over the classes
    assert ds.null_mask.shape == ds.x.shape
    assert torch.all(ds.null_mask[:, :, 8:]) and not torch.any(ds.null_mask[:, :, :8])


def test_spurious_test_independent(digits):
    x, y = digits
    ds = make_spurious(x, y, seed=1, train=False)
    patch_class = ds.group % 10
    assert torch.equal(ds.group // 10, y)
    assert torch.equal(ds.x[:, 0, 8:, :].flatten(1).argmax(1), patch_class)
    agree = (patch_class == y).float().mean().item()
    assert abs(agree - 0.1) < binomial_tol(1797, 0.1)
    counts = patch_class.bincount(minlength=10).float() / 1797  # uniform patch classes
    assert torch.all((counts - 0.1).abs() < binomial_tol(1797, 0.1))


def test_spurious_larger_images_use_bigger_patches():
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 3, 8, 9])
    ds = make_spurious(x, y, seed=0, train=True, agreement=1.0)
    p, per_row, band = patch_layout(28, 28, 10)
    assert (p, per_row, band) == (3, 9, 6) and ds.x.shape == (4, 1, 34, 28)
    for i, c in enumerate(y.tolist()):
        r, col = (c // per_row) * p, (c % per_row) * p
        assert torch.all(ds.x[i, 0, 28 + r:28 + r + p, col:col + p] == 1)
        assert ds.x[i, 0, 28:].sum() == p * p


def test_spurious_overlay_keeps_the_shape_and_lights_the_top_rows():
    x = torch.zeros(10, 1, 28, 28)
    x[:, :, 10:20, 10:20] = 0.5  # a "digit" away from the band
    x[1, 0, 1, 27] = 0.25        # a stray inked pixel inside the band, off the patch: kept
    y = torch.arange(10)
    ds = make_spurious(x, y, seed=0, train=True, agreement=1.0, overlay=True, patch=2)
    assert ds.x.shape == x.shape and torch.equal(ds.x[:, :, 2:], x[:, :, 2:])
    assert torch.all(ds.null_mask[:, :, :2]) and not torch.any(ds.null_mask[:, :, 2:])
    for c in range(10):  # a 2x2 square at columns 2c, 2c + 1 of rows 0-1, nothing else in the band
        assert torch.all(ds.x[c, 0, :2, 2 * c:2 * c + 2] == 1)
        assert ds.x[c, 0, :2].sum() == 4 + (0.25 if c == 1 else 0)
    with pytest.raises(ValueError, match="leaves nothing"):
        make_spurious(x[:, :, :2], y, seed=0, train=True, overlay=True, patch=2)
    with pytest.raises(ValueError, match="patch"):
        make_spurious(x, y, seed=0, train=True, overlay=True, patch=0)


def test_builders_reject_bad_input(digits):
    x, y = digits
    with pytest.raises(ValueError, match="N, 1, H, W"):
        make_blockmnist(x[:, 0], y, seed=0)
    with pytest.raises(ValueError, match="labels"):
        make_blockmnist(x, y[:-1], seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_blockmnist(x * 2, y, seed=0)
    with pytest.raises(ValueError, match="agreement"):
        make_spurious(x, y, seed=0, train=True, agreement=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        make_spurious(x, y, seed=0, train=True, num_classes=5)
