"""Mitigations, one file per strategy on the contract of :mod:`sweep.strategies.base`.

The registry and composition (``ewc+replay+freeze``) are in :mod:`sweep.strategies.registry`;
this package's own import loads nothing, so its torch-free modules can be read without torch.
"""
