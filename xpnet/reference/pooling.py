"""Max-pool with xpnet's ``ties="share"`` backward, written with torch's own operations."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair


def max_pool2d_sharing_ties(x, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> (N, C, Ho, Wo), a max-pool whose autograd sends each window's gradient
    to every position equal to its maximum (xpnet's ``ties="share"``).

    Written with unfold: y = (sum of the window's tied maxima) - (count - 1) * max, the second
    term detached, so y is the maximum and dy reaches each maximal position whole.
    """
    k = _pair(kernel_size)
    stride = k if stride is None else _pair(stride)
    ph, pw = _pair(padding)
    n, c, h, w = x.shape
    xpad = torch.nn.functional.pad(x, (pw, pw, ph, ph), value=-float("inf"))
    cols = torch.nn.functional.unfold(xpad, k, stride=stride).reshape(n, c, k[0] * k[1], -1)
    top = cols.max(dim=2, keepdim=True).values
    won = cols == top
    picked = torch.where(won, cols, torch.zeros_like(cols)).sum(dim=2)
    y = picked - ((won.sum(dim=2) - 1) * top.squeeze(2)).detach()
    return y.reshape(n, c, (h + 2 * ph - k[0]) // stride[0] + 1, -1)


class SharingMaxPool2d(nn.Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return max_pool2d_sharing_ties(x, self.kernel_size, self.stride, self.padding)
