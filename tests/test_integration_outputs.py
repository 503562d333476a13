"""Any model output: ``output=`` reads the (B, C) logits from a Hugging Face ``ModelOutput``, timm's
distillation tuple or a dict, in every pass; without it such outputs raise an error naming ``output=``.

Text classifiers take embeddings: the penalty with respect to ``inputs_embeds`` of a small BERT
classifier (random weights from a config, no download) against double backprop in float64.
Tolerances: where both sides are exact (estimator="exact", and rfd's value, which is ||g||^2) 1e-12
relative on values and 1e-10 on parameter gradients (float64 rounding through the same ops in
another order, as in tests/test_regularizer.py). rfd's parameter gradient is a randomly signed
secant along v: its expectation carries an O(h^2) bias and a single draw an O(h) term v^T H v; at
h = 1e-5 in float64 the cosine with the exact gradient must exceed 0.999 (the bound the penalty
tests use for finite differences on smooth nets).
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast._estimators.checks import OutputModel
from margreg_fast._estimators.passes import _unwrapped
from tests.gradients import parameter_gradient
from tests.timm_import import import_timm

C = 3


def _bert():
    import_timm()  # transformers imports torchvision: its op schemas first (tests/timm_import.py)
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=C,
                        attn_implementation="eager")  # SDPA has no double backward: the reference needs eager
    torch.manual_seed(0)
    return BertForSequenceClassification(config).double().eval()


def _embeddings(bert, batch=4, length=6):
    ids = torch.randint(0, 40, (batch, length), generator=torch.Generator().manual_seed(1))
    return bert.get_input_embeddings()(ids).detach()


def _double_backprop(f, e):
    """R per sample = ||d logsumexp f(e) / de||^2 by autograd with create_graph (the reference)."""
    e = e.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.logsumexp(f(e), 1).sum(), e, create_graph=True)
    return g.flatten(1).pow(2).sum(1)


def test_bert_inputs_embeds_penalty_matches_double_backprop():
    bert = _bert()
    e = _embeddings(bert)
    mask = torch.ones(e.shape[:2], dtype=torch.long)
    mask[0, -2:] = 0  # a padded sample: the mask enters every pass through the closure
    model = lambda emb: bert(inputs_embeds=emb, attention_mask=mask)  # noqa: E731
    ref = _double_backprop(lambda emb: model(emb).logits, e)
    exact = marginal_density_penalty(model, e, estimator="exact", reduction="none", output=lambda out: out.logits)
    torch.testing.assert_close(exact, ref, rtol=1e-12, atol=0)
    ref_gradient = parameter_gradient(bert, ref.mean())
    torch.testing.assert_close(parameter_gradient(bert, exact.mean()), ref_gradient, rtol=1e-10, atol=1e-14)
    torch.manual_seed(0)
    rfd = marginal_density_penalty(model, e, step=1e-5, output=lambda out: out.logits)
    assert math.isclose(rfd.item(), ref.mean().item(), rel_tol=1e-12)
    cosine = F.cosine_similarity(parameter_gradient(bert, rfd), ref_gradient, dim=0)
    assert cosine > 0.999


def test_regularizer_on_a_model_output_equals_the_logits_function():
    """output=lambda out: out.logits on the ModelOutput gives what a function returning .logits gives:
    loss, stats and parameter gradient, under the default estimator and a fraction."""
    bert = _bert()
    e, y = _embeddings(bert, batch=6), torch.tensor([0, 1, 2, 0, 1, 2])
    results = []
    for model, output in (((lambda emb: bert(inputs_embeds=emb)), (lambda out: out.logits)),
                          ((lambda emb: bert(inputs_embeds=emb).logits), None)):
        torch.manual_seed(0)
        reg = MarginalDensityRegularizer(0.5, fraction=0.5, output=output, generator=torch.Generator().manual_seed(2))
        loss, stats = reg(model, e, y)
        results.append((loss, stats))
    (a, sa), (b, sb) = results
    assert a.item() == b.item() and sa == sb
    torch.testing.assert_close(parameter_gradient(bert, a), parameter_gradient(bert, b), rtol=0, atol=0)


def test_model_output_without_output_names_the_keyword():
    bert = _bert()
    e, y = _embeddings(bert), torch.tensor([0, 1, 2, 0])
    with pytest.raises(TypeError, match=r"SequenceClassifierOutput with keys \['logits'\].*output=lambda out: out.logits"):
        MarginalDensityRegularizer(1.0)(lambda emb: bert(inputs_embeds=emb), e, y)
    with pytest.raises(TypeError, match="output="):
        marginal_density_penalty(lambda emb: bert(inputs_embeds=emb), e)


class DictModel(nn.Module):
    """Returns {"logits": z, "features": h}, as detection-style or custom heads do."""

    def __init__(self):
        super().__init__()
        self.features, self.head = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh()), nn.Linear(8, C)

    def forward(self, x):
        h = self.features(x)
        return {"logits": self.head(h), "features": h}


def test_dict_output_equals_the_plain_model():
    torch.manual_seed(0)
    model = DictModel().double()
    plain = lambda x: model(x)["logits"]  # noqa: E731
    x, y = torch.rand(4, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    for method in ("exact", "central"):
        got = marginal_density_penalty(model, x, estimator=method, output=lambda out: out["logits"])
        want = marginal_density_penalty(plain, x, estimator=method)
        assert math.isclose(got.item(), want.item(), rel_tol=1e-12), method
    with pytest.raises(TypeError, match=r"got a dict with keys \['logits', 'features'\].*output="):
        MarginalDensityRegularizer(1.0)(model, x, y)


def test_timm_distillation_tuple():
    """timm's distilled DeiT in distilled training returns (class-token logits, distillation logits);
    output=lambda out: out[0] penalises the first, as a function returning out[0] does; the error
    without output= lists the tuple's parts."""
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, depth=2,
                              num_classes=C)
    model.set_distilled_training(True)
    model.train()
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    assert isinstance(model(x), tuple)
    results = []
    for m, output in ((model, lambda out: out[0]), (lambda inp: model(inp)[0], None)):
        torch.manual_seed(0)  # rfd's signs and the drop-path draws: the same in both calls
        loss, stats = MarginalDensityRegularizer(1.0, output=output)(m, x, y)
        results.append((loss, stats, parameter_gradient(model, loss)))
    (a, sa, ga), (b, sb, gb) = results
    assert a.item() == b.item() and sa == sb
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"got a tuple of 2: \(a tensor of shape \(4, 3\).*output=lambda out: out\[0\]"):
        MarginalDensityRegularizer(1.0)(model, x, y)


def test_output_must_be_callable():
    with pytest.raises(TypeError, match="output must be None or a callable"):
        MarginalDensityRegularizer(1.0, output="logits")
    with pytest.raises(TypeError, match="output must be None or a callable"):
        marginal_density_penalty(nn.Linear(3, 2), torch.rand(2, 3), output="logits")


def test_probes_unwrap_ddp_inside_the_output_reader(tmp_path):
    """A DDP model given with output=: the clean pass runs through DDP (its one forward), the probes
    through DDP's .module, still read through output (single process, gloo)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{os.fspath(tmp_path / 'store')}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        inner = DictModel().double()
        ddp = nn.parallel.DistributedDataParallel(inner)
        reader = lambda out: out["logits"]  # noqa: E731
        wrapped = OutputModel(ddp, reader)
        probe_model = _unwrapped(wrapped)
        assert isinstance(probe_model, OutputModel) and probe_model.model is inner and probe_model.output is reader
        x, y = torch.rand(4, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
        torch.manual_seed(0)
        loss, _ = MarginalDensityRegularizer(1.0, output=reader)(ddp, x, y)
        loss.backward()
        got = [p.grad.clone() for p in inner.parameters()]
        inner.zero_grad()
        torch.manual_seed(0)
        loss_plain, _ = MarginalDensityRegularizer(1.0)(lambda inp: inner(inp)["logits"], x, y)
        loss_plain.backward()
        assert loss.item() == loss_plain.item()
        for a, p in zip(got, inner.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-12, atol=1e-15)
    finally:
        dist.destroy_process_group()
