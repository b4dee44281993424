"""Bayesian inference from the rule (Part III of the book).

Each module is one algorithm written as the Bayesian learning rule: a candidate family, an
estimator of :math:`\\nabla_\\mu \\mathbb{E}_q[\\bar\\ell]`, and :func:`blrlib.rule.blr_step` (or the
blockwise step of a mean-field product). Import the modules directly, for example
``from blrlib.inference import kalman``.
"""
