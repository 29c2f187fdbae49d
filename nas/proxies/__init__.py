"""Zero-cost proxies: scores of an untrained network from one fixed, seeded minibatch (or no data)."""
from .registry import PROXIES, ProxyInputs, score_network

__all__ = ["PROXIES", "ProxyInputs", "score_network"]

from . import scores  # noqa: E402,F401  (registers the proxies)
