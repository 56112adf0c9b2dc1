"""The built-in ``pretrained`` normalization: the per-channel statistics the backbone's weights expect.

``normalization: {name: pretrained}`` takes the mean and std a library backbone
(``timm``, ``torchvision``, ``ssd_vgg``) publishes as
:attr:`vision_pipe.Backbone.input_stats` — ImageNet's for most weights, Caffe-style
for VGG features — so an ImageNet backbone sees its inputs as it did in training.
Nothing is fitted; the statistics travel in checkpoints as ``channel_stats``' do.
"""

from __future__ import annotations

from vision_pipe import ChainError, StageContext, hookimpl, stage

from .channel_stats import ChannelStats


@stage("normalization", "pretrained")
def pretrained(context: StageContext) -> ChannelStats:
    """Normalize with the statistics of the backbone's pretrained weights: ``(x - mean[c]) / std[c]``.

    No parameters: the backbone says what its weights expect (timm's ``pretrained_cfg``,
    torchvision's weights transforms; ``vision-pipe check`` prints them). A backbone that
    publishes none (the built-in ``vgg``, ``resnet``) is a ChainError: use ``channel_stats``
    (given or fitted) or ``mean_image`` instead.
    """
    stats = context.backbone_input_stats
    if stats is None:
        raise ChainError(
            f"normalization stage 'pretrained': backbone '{context.backbone_name}' publishes no input statistics "
            "(its weights' mean and std); use channel_stats with the mean and std its weights were trained with, "
            "or channel_stats / mean_image fitted on your training images"
        )
    return ChannelStats(stats.mean, stats.std, source=stats.source)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [pretrained]
