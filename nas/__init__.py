"""Label-free neural architecture search: spaces, label sources, one trainer, search methods, analysis."""

__version__ = "0.1.0"
