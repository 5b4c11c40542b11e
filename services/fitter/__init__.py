"""Fitter service: face models, differentiable renderer and the three-stage RGB fitting."""
