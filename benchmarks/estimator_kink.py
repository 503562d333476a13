"""Why the fp32 default's gradient can point away from exact's on a smooth-activation net: resnet10t (SiLU, max-pool stem).

timm's resnet10t with SiLU activations, random init, train mode, batch 4 of uniform [0, 1) images at
64 px. For several steps h: the cosine of the parameter gradient of the mean penalty with exact's,
for rfd (one value per sign draw, 5 draws; a draw gives each of the 4 samples a sign), central
and fd (every sign +1). If the rfd draws take only two values and fd equals one of them, the
direction is decided by the sign of one sample's probe: that sample's S has a kink next to x along
+v or -v (a max-pool window of the stem whose two largest entries nearly tie switches its maximum
within the step, whatever the activation), and the one-sided secant on that side measures the
other branch's slope.

    python benchmarks/estimator_kink.py

Writes benchmarks/results/estimator_kink.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast import marginal_density_penalty  # noqa: E402
from tests.timm_import import import_timm  # noqa: E402

DRAWS = 5


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = import_timm().create_model("resnet10t", pretrained=False, num_classes=10, act_layer="silu").train()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())

    def gradient(method, step, seed):
        torch.manual_seed(seed)
        value = marginal_density_penalty(model, x, estimator=method, step=step)
        return torch.cat([g.flatten() for g in torch.autograd.grad(value, params)]).double()

    reference = gradient("exact", "auto", 0)

    def cosine(method, step, seed=0):
        return F.cosine_similarity(gradient(method, step, seed), reference, dim=0).item()

    old = 4 * torch.finfo(torch.float32).eps ** (1 / 3) * x.flatten(1).pow(2).mean(1).sqrt().mean().item()
    cells = []
    for label, step in (("auto", "auto"), (f"{old:.3g} (4 eps^(1/3) RMS, the old rule)", old), ("1e-3", 1e-3),
                        ("1e-4", 1e-4)):
        draws = " ".join(f"{cosine('rfd', step, s):.3f}" for s in range(DRAWS))
        cells.append([label, draws, f"{cosine('central', step):.3f}", f"{cosine('fd', step):.3f}"])
        print(" | ".join(cells[-1]), flush=True)
    lines = ["**Cosine with exact's parameter gradient**", ""]
    lines += report.table(["h", f"rfd, {DRAWS} sign draws", "central", "fd (s = +1)"], cells, "lrrr")

    title = ("The fp32 default on timm resnet10t (SiLU, max-pool stem), random init, train mode, batch 4 of uniform "
             "[0, 1) images at 64 px.")
    print(report.write_markdown(report.RESULTS / "estimator_kink.md", title, lines, report.command_line()))


if __name__ == "__main__":
    main()
