"""Search methods over a trained supernet, one module each, chosen by ``search.method``."""
from . import evolution, random_search  # noqa: F401  (register the methods)
from .fitness import AccuracyFitness, AngleFitness
from .registry import METHODS, Evaluated, Scorer

__all__ = ["METHODS", "Evaluated", "Scorer", "AccuracyFitness", "AngleFitness"]
