"""Evaluation: :mod:`train.eval.probe` (linear probe and nearest-neighbour scores of pre-trained features)."""
