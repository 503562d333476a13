"""TRADES's default beta, apart from kit/adversarial.py so that the experiment config reads it without
importing the attacks (and scipy) that the core tests' environment lacks."""

#: TRADES's default trade-off beta (the paper's MNIST / CIFAR setting).
TRADES_BETA = 6.0
