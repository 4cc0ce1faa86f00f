"""``Conv2d``: a 2-D convolution layer over NCHW input (weight (out, in/groups, kH, kW), optional bias)."""

from __future__ import annotations

import math
from typing import Any

from minires.nn import functional as F
from minires.nn import init
from minires.nn.modules._factory import new_parameter
from minires.nn.modules.module import Module
from minires.ops.conv import check_groups
from minires.ops.geometry import padding4, pair
from minires.tensor import Tensor

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class Conv2d(Module):
    """2-D convolution, PyTorch's ``nn.Conv2d``: ``y = conv2d(x, weight, bias, stride, padding, dilation, groups)``.

    Default initialisation as PyTorch's: weight ~ kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with fan_in = in/groups * kH * kW.
    ``padding`` is an int, a pair, "same" or "valid"; only ``padding_mode="zeros"`` is implemented.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if padding_mode != "zeros":
            raise NotImplementedError(f"Conv2d: padding_mode={padding_mode!r} is not implemented; use 'zeros'")
        # The op's own parsers and checks, run once here so a bad layer fails when it is built.
        check_groups("Conv2d", groups, in_channels, out_channels)
        self.kernel_size = pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = pair("Conv2d", "stride", stride, 1)
        self.dilation = pair("Conv2d", "dilation", dilation, 1)
        padding4("Conv2d", padding, self.kernel_size, self.stride, self.dilation, strings=True)
        self.padding: tuple[int, int] | str = padding if isinstance(padding, str) else pair("Conv2d", "padding", padding)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.padding_mode = padding_mode
        self.weight = new_parameter((out_channels, in_channels // groups, *self.kernel_size), device, dtype)
        if bias:
            self.bias = new_parameter((out_channels,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init (see the class docstring)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - PyTorch's argument name
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s
