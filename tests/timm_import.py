"""Import timm next to the CPU build of torch.

The package index serves torchvision 0.28.0 as a CUDA build. Its ``_C`` extension cannot load with
the CPU torch, and torchvision then registers Python fake kernels for ``torchvision::nms`` and
``torchvision::qnms``, whose schemas the extension would have defined: ``import torchvision`` (which
``import timm`` does) fails with "operator torchvision::nms does not exist". Defining the two schemas
then lets the import go through. Nothing here calls those ops; timm's models never do.

The schemas are defined only after that failure: with a torchvision whose extension loads (one built
for this torch), the extension defines them itself, and defining them first would make it fail.
"""
import importlib
import sys

import torch

_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
}


def import_timm():
    """The ``timm`` module, with torchvision's two op schemas defined if its extension could not load."""
    try:
        return importlib.import_module("timm")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    for name in [m for m in sys.modules if m.split(".")[0] in ("timm", "torchvision")]:
        del sys.modules[name]  # partly imported: import them again
    for name, schema in _SCHEMAS.items():
        namespace, op = name.split("::")
        if not hasattr(getattr(torch.ops, namespace), op):
            torch.library.define(name, schema)
    return importlib.import_module("timm")
