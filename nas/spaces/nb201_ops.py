"""NAS-Bench-201's modules: the cell ops, the residual reduction block, and the helpers that run a cell's
edges (a node's shared ReLU, in-place node sums, op weights folded into BN) for ``nb201``'s networks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ConfigError

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

# Memory layout of the networks' activations, on every device. CPU: oneDNN runs convolutions and BN
# natively in NHWC (no reorder per call), and the NCHW kernel of the cells' 3x3
# ``count_include_pad=False`` average pool is ~10x slower than the NHWC one; together this halves a
# single-path supernet step. CUDA: cuDNN's bf16 tensor-core convolutions are NHWC (an NCHW input costs
# layout transposes around every convolution), and PyTorch's NCHW BatchNorm kernels parallelise over
# channels only (16 blocks for C=16); on an H100 a stand-alone training step spends 2.3x less GPU time
# in channels_last (benchmarks/gpu_training.py --profile).
ACTIVATION_FORMAT = torch.channels_last


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN; the conv carries a bias exactly when the BN has no affine parameters (as upstream)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool, track_stats: bool) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=not affine),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track_stats),
        )


class ResidualReduction(nn.Module):
    """The benchmark's ResNet basic block between stages (stride 2, channels doubled)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine=True, track_stats=True)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine=True, track_stats=True)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)).add_(self.shortcut(x))  # BN's output is not kept for backward


class AvgPool3x3(nn.AvgPool2d):
    """The cells' 3x3 average pool: stride 1, padding 1, padded positions not counted.

    On CUDA the zero padding is applied beforehand and the pool itself runs unpadded: PyTorch's
    channels-last CUDA backward of a padded average pool returns wrong input gradients (the kernel
    leaves out the padding offset; pytorch/pytorch#188344). On an H100 with PyTorch 2.11 it moved
    these pools' input gradients by 51-93 % in float32, the gradient reaching the stem by 29 % and
    single parameters' gradients by up to 80 %, with a correct forward. Dividing the window sum by
    each position's count of real inputs equals the padded ``count_include_pad=False`` pool. The CPU
    keeps PyTorch's own kernel: correct there, and faster (3.6 against 4.6 ms forward and backward at
    64x16x32x32 channels-last on 2 cores).
    """

    def __init__(self) -> None:
        super().__init__(3, stride=1, padding=1, count_include_pad=False)
        self._inverse_counts: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_padded_beforehand(x) if x.is_cuda else super().forward(x)

    def pool_padded_beforehand(self, x: torch.Tensor) -> torch.Tensor:
        """The same pool, with the padding done by ``F.pad`` and the pool itself unpadded (the CUDA path)."""
        window_sums = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=1, divisor_override=1)
        return window_sums * self._inverse_count(x)

    def _inverse_count(self, x: torch.Tensor) -> torch.Tensor:
        """1 / (real inputs under each 3x3 window), shape (1, 1, H, W), cached per size, device and dtype."""
        key = (x.shape[-2:], x.device, x.dtype)
        if key not in self._inverse_counts:
            ones = torch.ones(1, 1, *x.shape[-2:], dtype=torch.float64)
            counts = F.avg_pool2d(ones, 3, stride=1, padding=1, divisor_override=1)
            self._inverse_counts[key] = (1.0 / counts).to(x.device, x.dtype)
        return self._inverse_counts[key]


def make_op(name: str, channels: int, affine: bool, track_stats: bool) -> nn.Module | None:
    """A stride-1 cell op; None for ``none`` (it is skipped, never multiplied by zero)."""
    if name == "none":
        return None
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, affine, track_stats)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, affine, track_stats)
    if name == "avg_pool_3x3":
        return AvgPool3x3()
    raise ConfigError(f"unknown nb201 op {name!r}; allowed: {', '.join(OPS)}")


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * bn(x)`` for a one-element ``scale``, as one BatchNorm whose affine weight and bias are scaled.

    The same running statistics and, up to rounding, the same output and gradients as the product, without
    the product's pass over the activation forward and its two backward (the input's gradient scaled, the
    scale's gradient summed): the BN backward yields both. A mixture's ReLU-conv-BN terms use it; with it a
    DARTS-V1 search iteration of the C=16 N=5 supernet (batch 64, 2 CPU threads) took 1.80 s against 2.01 s
    (benchmarks/step_speed.py workers, interleaved). The running-statistics rules are those of
    ``nn.BatchNorm2d.forward``.
    """
    # Contiguous, not expanded: PyTorch's channels-last CPU BatchNorm backward returns wrong input gradients
    # for a stride-0 weight (torch 2.14: off by 1e17 at 8x4x5x5), right ones for a contiguous one.
    weight = scale.expand(bn.num_features).contiguous() if bn.weight is None else bn.weight * scale
    bias = None if bn.bias is None else bn.bias * scale
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    stored = not bn.training or bn.track_running_stats  # statistics read or updated, as in the module
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    return F.batch_norm(x, bn.running_mean if stored else None, bn.running_var if stored else None, weight, bias,
                        batch_stats, factor, bn.eps)


class _NodeInputs:
    """Runs ops on a cell's nodes, rectifying each node once for all the ReLU-conv-BN ops that read it.

    Every ReLUConvBN starts with a ReLU of its input; a node read by k such ops would otherwise be
    rectified k times forward and masked k times backward, a full pass over the activation each time
    (0.25 ms forward at 64x16x32x32 on 2 cores, within a training step). Sharing it is exact: the ReLU is a function of the node alone, and its backward
    mask distributes over the sum of its consumers' gradients. An op whose ReLU module is watched by a
    hook (NASWOT counts every ReLU module's activations) calls that module, so that each hook sees its
    call; a mixture weight is folded into an op's BN only while no hook watches that BN module.
    """

    def __init__(self, nodes: list[torch.Tensor]) -> None:
        self.nodes = nodes
        self.rectified: dict[int, torch.Tensor] = {}

    def apply(self, op: nn.Module, src: int) -> tuple[torch.Tensor, bool]:
        """``op(node src)`` and whether the result is a fresh tensor (not the node itself)."""
        if isinstance(op, ReLUConvBN) and not _hooked(op[0]):
            _, conv, bn = op
            return bn(conv(self._rectified(src))), True
        return op(self.nodes[src]), not isinstance(op, nn.Identity)

    def apply_weighted(self, op: nn.Module, src: int, weight: torch.Tensor) -> torch.Tensor:
        """``weight * op(node src)`` for a one-element ``weight``, a fresh tensor; a ReLU-conv-BN op takes the
        weight into its BN (``scaled_batch_norm``)."""
        if isinstance(op, ReLUConvBN) and not _hooked(op[2]):
            relu, conv, bn = op
            rectified = relu(self.nodes[src]) if _hooked(relu) else self._rectified(src)
            return scaled_batch_norm(bn, conv(rectified), weight)
        return weight * self.apply(op, src)[0]

    def _rectified(self, src: int) -> torch.Tensor:
        if src not in self.rectified:
            self.rectified[src] = torch.relu(self.nodes[src])
        return self.rectified[src]


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class _NodeSum:
    """The sum of a node's incoming edges, accumulated in place once it holds a tensor of its own.

    In place is safe for the tensors that reach it: BN, average pooling and scaling do not keep their
    outputs for backward (autograd's version check would raise if one did); a skip connection's
    output is another node, so a sum that starts with one accumulates into the next owned term
    instead (a + b == b + a exactly). A fresh output costs memory traffic: at 64x16x32x32 on 2 cores
    an out-of-place sum took 0.36 ms, an in-place one 0.24 ms, once the allocator had the memory (the
    first, page-faulting allocation took 1.4 ms).
    """

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.owned = False

    def add(self, term: torch.Tensor, owned: bool) -> None:
        if self.value is None:
            self.value, self.owned = term, owned
        elif self.owned:
            self.value.add_(term)
        elif owned:
            self.value, self.owned = term.add_(self.value), True
        else:
            self.value, self.owned = self.value + term, True

    def result(self, like: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """The sum plus ``shift`` (a scalar; in place into a sum of its own); zeros shaped ``like`` plus ``shift``
        for a node whose every edge is ``none``."""
        if self.value is None:
            self.value, self.owned = torch.zeros_like(like), True
        if shift is None:
            return self.value
        return self.value.add_(shift) if self.owned else self.value + shift
