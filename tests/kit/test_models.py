"""The paper-scale BlockMNIST model: shapes, widths and activations."""
import pytest
import torch

from margreg_fast.kit.models import PaperCNN


def test_paper_cnn_shapes_at_the_papers_width():
    model = PaperCNN(width=32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 64, (5, 5))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(64 * 14 * 7, 1024), (1024, 10)]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 2
    assert model(torch.rand(3, 1, 56, 28)).shape == (3, 10)


def test_paper_cnn_width_and_smooth_activation():
    model = PaperCNN(width=8, activation="softplus")
    assert model(torch.rand(2, 1, 56, 28)).shape == (2, 10)
    assert any(isinstance(m, torch.nn.Softplus) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    with pytest.raises(ValueError, match="activation"):
        PaperCNN(activation="swish")
    with pytest.raises(ValueError, match="width"):
        PaperCNN(width=0)
