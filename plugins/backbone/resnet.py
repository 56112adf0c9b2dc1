"""ResNet-style backbone stage (``backbone: {name: resnet}``).

He et al., "Deep Residual Learning for Image Recognition" (2015): basic blocks
(two 3×3 convs) for depths 10/18/34, bottleneck blocks (1×1, 3×3, 1×1 with 4×
expansion, stride on the 3×3 as torchvision's "ResNet v1.5") for 50/101/152.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field
from torch import Tensor, nn

from vision_pipe import Backbone, FeatureInfo, Features, hookimpl, stage

from .common import Activation, Channels, Init, init_weights, make_activation

#: Depth → (block type, blocks per stage).
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
#: ``small``: 3×3 conv stride 1, no pooling; ``imagenet``: 7×7 conv stride 2 + 3×3 max pooling stride 2.
Stem = Literal["small", "imagenet"]
MAX_STAGES = 4


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, batch_norm: bool) -> nn.Conv2d:
    # padding kernel // 2 and stride s give ceil(size / s) for every size
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=not batch_norm)


class BasicBlock(nn.Module):
    """Two 3×3 convs plus shortcut: (B, C_in, H, W) → (B, planes, ceil(H/stride), ceil(W/stride))."""

    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int, batch_norm: bool, activation: str, leaky_slope: float
    ) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, planes, 3, stride, batch_norm)
        self.bn1 = _norm(planes, batch_norm)
        self.act1 = make_activation(activation, leaky_slope)
        self.conv2 = _conv(planes, planes, 3, 1, batch_norm)
        self.bn2 = _norm(planes, batch_norm)
        self.act2 = make_activation(activation, leaky_slope)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride, batch_norm)

    def last_layers(self) -> tuple[nn.Conv2d, nn.Module]:
        """The residual branch's last conv and norm (zero-initialised by ``zero_init_residual``)."""
        return self.conv2, self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carries the stride), 1×1 expand ×4, plus shortcut:
    (B, C_in, H, W) → (B, 4·planes, ceil(H/stride), ceil(W/stride))."""

    expansion = 4

    def __init__(
        self, in_channels: int, planes: int, stride: int, batch_norm: bool, activation: str, leaky_slope: float
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv(in_channels, planes, 1, 1, batch_norm)
        self.bn1 = _norm(planes, batch_norm)
        self.act1 = make_activation(activation, leaky_slope)
        self.conv2 = _conv(planes, planes, 3, stride, batch_norm)
        self.bn2 = _norm(planes, batch_norm)
        self.act2 = make_activation(activation, leaky_slope)
        self.conv3 = _conv(planes, out_channels, 1, 1, batch_norm)
        self.bn3 = _norm(out_channels, batch_norm)
        self.act3 = make_activation(activation, leaky_slope)
        self.downsample = _shortcut(in_channels, out_channels, stride, batch_norm)

    def last_layers(self) -> tuple[nn.Conv2d, nn.Module]:
        """The residual branch's last conv and norm (zero-initialised by ``zero_init_residual``)."""
        return self.conv3, self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> nn.Module | None:
    """None (identity) when shapes match, else a strided 1×1 conv [+ batch norm]."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv(in_channels, out_channels, 1, stride, batch_norm), _norm(out_channels, batch_norm))


class ResNet(Backbone):
    """ResNet-style backbone: (B, C_in, H, W) float → maps ``stage1``..``stageN``.

    Map ``stage{i}`` is (B, C_i, ceil(H / s_i), ceil(W / s_i)) with C_i =
    expansion · width · 2**(i-1) and s_i = 2**(i-1) for the small stem,
    2**(i+1) for the imagenet stem (as declared in ``feature_info``).
    """

    provides: frozenset[str] = frozenset()

    def __init__(
        self,
        block: str,
        blocks_per_stage: tuple[int, ...],
        *,
        width: int = 64,
        stem: str = "small",
        in_channels: int = 3,
        activation: str = "relu",
        leaky_slope: float = 0.01,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        block_cls = Bottleneck if block == "bottleneck" else BasicBlock
        if stem == "imagenet":
            self.stem = nn.Sequential(
                _conv(in_channels, width, 7, 2, batch_norm),
                _norm(width, batch_norm),
                make_activation(activation, leaky_slope),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
            stem_stride = 4
        else:
            self.stem = nn.Sequential(
                _conv(in_channels, width, 3, 1, batch_norm),
                _norm(width, batch_norm),
                make_activation(activation, leaky_slope),
            )
            stem_stride = 1
        self.stage_names: list[str] = []
        self.feature_info: list[FeatureInfo] = []
        channels = width
        for i, n_blocks in enumerate(blocks_per_stage):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(block_cls(channels, planes, stride if j == 0 else 1, batch_norm, activation, leaky_slope))
                channels = planes * block_cls.expansion
            name = f"stage{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.feature_info.append(FeatureInfo(name=name, channels=channels, stride=stem_stride * 2**i))

    def residual_blocks(self) -> list[BasicBlock | Bottleneck]:
        """Every residual block, in order."""
        return [m for m in self.modules() if isinstance(m, (BasicBlock, Bottleneck))]

    def forward(self, images: Tensor) -> Features:
        """(B, C_in, H, W) float → :class:`Features` with one map per stage, finest first."""
        x = self.stem(images)
        maps: dict[str, Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            maps[name] = x
        return Features(maps=maps)


@stage("backbone", "resnet")
def resnet(
    depth: Literal[10, 18, 34, 50, 101, 152] = 18,
    width: Channels = 64,
    stages: Annotated[int, Field(ge=1, le=MAX_STAGES)] = 4,
    activation: Activation = "relu",
    leaky_slope: float = 0.01,
    init: Init = "he",
    batch_norm: bool = True,
    stem: Stem = "small",
    zero_init_residual: bool = True,
    in_channels: Channels = 3,
) -> ResNet:
    """ResNet-style backbone (basic blocks for depth 10/18/34, bottlenecks for 50/101/152).

    Produces maps ``stage1``..``stage{stages}`` with channels width, 2·width,
    4·width, 8·width (×4 for bottleneck depths) and strides 1, 2, 4, 8 pixels
    with the small stem or 4, 8, 16, 32 with the imagenet stem (sizes round up
    for odd inputs). Provides no pooling indices.

    Args:
        depth: blocks per stage 10: 1,1,1,1 · 18: 2,2,2,2 · 34: 3,4,6,3 (basic);
            50: 3,4,6,3 · 101: 3,4,23,3 · 152: 3,8,36,3 (bottleneck).
        width: channels of the stem and of the first stage's blocks; doubled per stage.
        stages: how many stages to keep (1..4).
        activation: ``relu``, ``leaky_relu`` or ``elu``.
        leaky_slope: negative slope of ``leaky_relu``.
        init: ``he`` (kaiming normal, fan_out) or ``xavier`` (xavier uniform).
        batch_norm: batch norm after every conv; if false, identity instead and convs get biases.
        stem: ``small`` (3×3 conv, stride 1, no pooling: for inputs of ~32 px) or
            ``imagenet`` (7×7 conv stride 2 + 3×3 max pooling stride 2, as torchvision).
        zero_init_residual: start each residual branch at zero (its last batch-norm
            weight, or its last conv without batch norm) so every block starts as identity.
        in_channels: channels of the input images.
    """
    block, blocks_per_stage = DEPTHS[depth]
    model = ResNet(
        block,
        blocks_per_stage[:stages],
        width=width,
        stem=stem,
        in_channels=in_channels,
        activation=activation,
        leaky_slope=leaky_slope,
        batch_norm=batch_norm,
    )
    init_weights(model, init, activation, leaky_slope)
    if zero_init_residual:
        for residual in model.residual_blocks():
            conv, norm = residual.last_layers()
            nn.init.zeros_(norm.weight if isinstance(norm, nn.BatchNorm2d) else conv.weight)
    return model


@hookimpl
def vision_pipe_stages() -> list[Callable[..., Any]]:
    return [resnet]
