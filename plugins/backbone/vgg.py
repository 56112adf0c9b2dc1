"""VGG-style backbone stage (``backbone: {name: vgg}``).

Plain stacks of 3×3 convolutions, each stage ending in a 2×2 max pooling that
halves the size (rounding up) and whose indices are returned for unpooling
(SegNet-style decoders).
"""

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field
from torch import Tensor, nn

from vision_pipe import Backbone, FeatureInfo, Features, hookimpl, stage

from .common import Activation, Channels, Init, init_weights, make_activation

#: Depth → convolutions per stage. Depth counts like torchvision's VGG names:
#: conv layers + 3 (the classifier layers torchvision has and this backbone has not).
DEPTHS: dict[int, tuple[int, int, int, int, int]] = {
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
MAX_STAGES = 5


class VGGStage(nn.Module):
    """Convs then a 2×2 / stride 2 max pooling (ceil mode, so sizes round up)."""

    def __init__(self, convs: nn.Sequential) -> None:
        super().__init__()
        self.convs = convs
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True, ceil_mode=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """(B, C, H, W) → pooled (B, C', ceil(H/2), ceil(W/2)), its int64 indices, and (H, W) before pooling."""
        x = self.convs(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        pooled, indices = self.pool(x)
        return pooled, indices, size


class VGG(Backbone):
    """VGG-style backbone: (B, C_in, H, W) float → maps ``stage1``..``stageN``.

    Map ``stage{i}`` is (B, channels[i-1], ceil(H / 2**i), ceil(W / 2**i)): the
    output of stage i's max pooling. ``pool_indices["stage{i}"]`` holds that
    pooling's (B, channels[i-1], h, w) int64 indices and the (H, W) of its input.
    """

    provides = frozenset({"pool_indices"})

    def __init__(
        self,
        convs_per_stage: Sequence[int],
        channels: Sequence[int],
        *,
        in_channels: int = 3,
        activation: str = "relu",
        leaky_slope: float = 0.01,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.stage_names: list[str] = []
        self.feature_info: list[FeatureInfo] = []
        previous = in_channels
        for i, (n_convs, width) in enumerate(zip(convs_per_stage, channels, strict=True), start=1):
            layers: list[nn.Module] = []
            for _ in range(n_convs):
                layers.append(nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(make_activation(activation, leaky_slope))
                previous = width
            name = f"stage{i}"
            self.add_module(name, VGGStage(nn.Sequential(*layers)))
            self.stage_names.append(name)
            self.feature_info.append(FeatureInfo(name=name, channels=width, stride=2**i))

    def forward(self, images: Tensor) -> Features:
        """(B, C_in, H, W) float → :class:`Features` with maps and pooling indices, finest first."""
        x = images
        maps: dict[str, Tensor] = {}
        pool_indices: dict[str, tuple[Tensor, tuple[int, int]]] = {}
        for name in self.stage_names:
            x, indices, size = getattr(self, name)(x)
            maps[name] = x
            pool_indices[name] = (indices, size)
        return Features(maps=maps, pool_indices=pool_indices)


@stage("backbone", "vgg")
def vgg(
    depth: Literal[8, 11, 13, 16, 19] = 11,
    width: Channels = 64,
    stages: Annotated[int, Field(ge=1, le=MAX_STAGES)] = 5,
    activation: Activation = "relu",
    leaky_slope: float = 0.01,
    init: Init = "he",
    batch_norm: bool = True,
    in_channels: Channels = 3,
) -> VGG:
    """VGG-style backbone: 3×3 convs [+ batch norm] + activation, then 2×2 max pooling, per stage.

    Produces maps ``stage1``..``stage{stages}`` with strides 2, 4, 8, 16, 32 pixels
    (sizes round up for odd inputs) and channels ``width``, 2·width, 4·width,
    8·width, 8·width; provides ``pool_indices`` for unpooling.

    Args:
        depth: 8, 11, 13, 16 or 19 (torchvision's naming: conv layers + 3); convs per
            stage 8: 1,1,1,1,1 · 11: 1,1,2,2,2 · 13: 2,2,2,2,2 · 16: 2,2,3,3,3 · 19: 2,2,4,4,4.
        width: channels of the first stage; doubled per stage, capped at 8·width.
        stages: how many stages to keep (1..5); fewer for small inputs.
        activation: ``relu``, ``leaky_relu`` or ``elu``.
        leaky_slope: negative slope of ``leaky_relu``.
        init: ``he`` (kaiming normal, fan_out) or ``xavier`` (xavier uniform).
        batch_norm: batch norm after every conv (convs then have no bias).
        in_channels: channels of the input images.
    """
    convs = DEPTHS[depth][:stages]
    channels = [min(width * 2**i, 8 * width) for i in range(stages)]
    model = VGG(
        convs,
        channels,
        in_channels=in_channels,
        activation=activation,
        leaky_slope=leaky_slope,
        batch_norm=batch_norm,
    )
    init_weights(model, init, activation, leaky_slope)
    return model


@hookimpl
def vision_pipe_stages() -> list[Callable[..., Any]]:
    return [vgg]
