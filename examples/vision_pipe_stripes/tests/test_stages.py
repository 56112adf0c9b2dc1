"""The plugin's own tests: vision-pipe's testing kit checks each stage's contract."""

from vision_pipe_stripes.stages import stripes, tiny_convnet

from vision_pipe.plugins import PluginManager
from vision_pipe.testing import check_backbone, check_loader, check_stage


def test_tiny_convnet_keeps_the_backbone_contract():
    backbone = check_backbone(tiny_convnet, width=4)
    assert [f.stride for f in backbone.feature_info] == [2, 4]


def test_stripes_keeps_the_loader_contract():
    check_loader(stripes, "classification", num_images=6, size=16)


def test_the_installed_package_registers_both_stages():
    manager = PluginManager()
    for kind, name in [("loading", "stripes"), ("backbone", "tiny_convnet")]:
        entry = manager.registry.get(kind, name)
        assert entry.distribution == "vision-pipe-stripes"
        check_stage(entry, **({"num_images": 4} if kind == "loading" else {"width": 2}))
