"""The embedded default: small, offline examples that show SparseVLM's effects on a laptop CPU."""
from .tensors import planted_example, walkthrough

__all__ = ["planted_example", "walkthrough"]
