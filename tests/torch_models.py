"""PyTorch models the PyTorch tests share (import it after `import_or_skip("torch")`)."""

from __future__ import annotations

import torch
from torch import nn


class Named(nn.Module):
    """Modules registered stem, bn, body, head: not in alphabetical order (body, bn, head, stem),
    which a .pth keeps and a .safetensors file cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Conv2d(8, 8, 3, groups=8)  # depthwise
        self.head = nn.Linear(8 * 4 * 4, 5)  # after an NCHW flatten of 4x4x8 (8x8 inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        return self.head(torch.flatten(torch.relu(self.body(x)), 1))


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, BatchNorm's affine and statistics too (a fresh one has mean 0,
    var 1: a swapped mean and variance would go unnoticed), and eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()
