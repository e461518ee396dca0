"""The Lipschitz rule of every operation lipcheck bounds, one module per family; importing this package
registers them all in `graph.RULES`."""

from lipcheck.bounds.rules import elementwise, linear, normalisation, pooling, structure

__all__ = ["elementwise", "linear", "normalisation", "pooling", "structure"]
