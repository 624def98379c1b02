"""Small helpers shared by the math tests."""
import torch


def rand(*shape, seed=0):
    """A seeded standard-normal tensor."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
