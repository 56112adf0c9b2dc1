"""Plugin manager and stage registry: discovery, validation at registration, conflicts, YAML plugins."""

from __future__ import annotations

import textwrap
import types
import pytest

from vision_pipe import PluginError, Pipeline, hookimpl, stage
from vision_pipe.plugins import PluginManager

BUILTIN_PLUGINS = {
    "synthetic_shapes", "image_folder", "mean_image", "channel_stats",
    "albumentations", "vgg", "resnet", "classification",
}  # fmt: skip


def _plugin(name: str, *factories) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def vision_pipe_stages():
        return list(factories)

    module.vision_pipe_stages = vision_pipe_stages
    return module


def test_builtin_stages_come_from_entry_points():
    manager = PluginManager()
    assert BUILTIN_PLUGINS <= set(manager.plugins)
    assert manager.plugins["vgg"].distribution == "vision-pipe"
    assert ("backbone", "vgg") in manager.plugins["vgg"].stages
    entry = manager.registry.get("backbone", "vgg")
    assert entry.plugin == "vgg" and not entry.takes_context
    assert [p.name for p in entry.parameters][:3] == ["depth", "width", "stages"]
    assert manager.registry.get("head", "classification").takes_context
    assert "HorizontalFlip" in manager.registry.names("augmentation")


def test_disable_and_no_autoload(monkeypatch):
    assert "vgg" not in PluginManager(disabled=["vgg"]).plugins
    monkeypatch.setenv("VISION_PIPE_DISABLE_PLUGINS", "resnet, vgg")
    manager = PluginManager()
    assert not {"resnet", "vgg"} & set(manager.plugins)
    assert "classification" in manager.plugins
    assert PluginManager(autoload=False).plugins == {}


def test_duplicate_stage_names_both_plugins():
    @stage("backbone", "twin")
    def first(width: int = 1):
        return None

    @stage("backbone", "twin")
    def second(width: int = 2):
        return None

    manager = PluginManager(autoload=False)
    manager.register(_plugin("pkg_one"), name="pkg_one")
    manager.register(_plugin("pkg_one_stages", first), name="one")
    with pytest.raises(PluginError, match=r"backbone stage 'twin' is registered twice: by plugin 'one' and by plugin 'two'"):
        manager.register(_plugin("pkg_two", second), name="two")


def test_override_replaces_and_records_what_it_replaced():
    @stage("backbone", "vgg", override=True)
    def my_vgg(width: int = 1):
        return None

    manager = PluginManager()
    manager.register(_plugin("better", my_vgg), name="better")
    entry = manager.registry.get("backbone", "vgg")
    assert entry.factory is my_vgg and entry.overrides == "vgg" and entry.plugin == "better"


def test_factory_without_type_hints_is_rejected():
    @stage("backbone", "untyped")
    def untyped(width=3):
        return None

    with pytest.raises(PluginError, match=r"parameter 'width' has no type hint.*width: int"):
        PluginManager(autoload=False).register(_plugin("p", untyped), name="p")


def test_unmarked_factory_instance_and_bad_kind_are_rejected():
    def plain(width: int = 1):
        return None

    manager = PluginManager(autoload=False)
    with pytest.raises(PluginError, match=r"not marked as a stage; decorate it with @vision_pipe.stage"):
        manager.register(_plugin("a", plain), name="a")
    with pytest.raises(PluginError, match="not callable"):
        manager.register(_plugin("b", object()), name="b")

    @stage("backbones", "x")
    def wrong_kind(width: int = 1):
        return None

    with pytest.raises(PluginError, match=r"unknown kind 'backbones'.*Did you mean 'backbone'"):
        manager.register(_plugin("c", wrong_kind), name="c")


def test_reserved_parameter_name_is_rejected():
    @stage("backbone", "weighted")
    def weighted(weights: str = ""):
        return None

    with pytest.raises(PluginError, match="'weights', which is reserved"):
        PluginManager(autoload=False).register(_plugin("p", weighted), name="p")


def test_hook_with_wrong_signature_or_unknown_hook_is_rejected():
    bad = types.ModuleType("bad")

    @hookimpl
    def vision_pipe_before_fit(pipeline, run_dir, unknown_argument):
        pass

    bad.vision_pipe_before_fit = vision_pipe_before_fit
    with pytest.raises(PluginError, match="unknown_argument"):
        PluginManager(autoload=False).register(bad, name="bad")

    typo = types.ModuleType("typo")
    typo.vision_pipe_befor_fit = hookimpl(lambda pipeline: None)
    with pytest.raises(PluginError, match=r"unknown hook 'vision_pipe_befor_fit'.*Did you mean 'vision_pipe_before_fit'"):
        PluginManager(autoload=False).register(typo, name="typo")


def test_class_instead_of_instance_is_rejected():
    class Plugin:
        @hookimpl
        def vision_pipe_stages(self):
            return []

    with pytest.raises(PluginError, match="forgotten the `\\(\\)`"):
        PluginManager(autoload=False).register(Plugin, name="cls")


def test_plugin_named_in_yaml_provides_a_stage(tiny_config, write_yaml, tmp_path, monkeypatch):
    (tmp_path / "my_local_stages.py").write_text(
        textwrap.dedent(
            '''
            import torch
            from vision_pipe import Backbone, FeatureInfo, Features, hookimpl, stage

            class Tiny(Backbone):
                def __init__(self, width):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
                    self.feature_info = [FeatureInfo("out", width, 2)]

                def forward(self, images):
                    return Features(maps={"out": torch.relu(self.conv(images))})

            @stage("backbone", "tiny_local")
            def tiny_local(width: int = 4) -> Tiny:
                """A one-conv backbone for tests."""
                return Tiny(width)

            @hookimpl
            def vision_pipe_stages():
                return [tiny_local]
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_config["plugins"] = ["my_local_stages"]
    tiny_config["model"]["backbone"] = {"name": "tiny_local", "width": 5}
    pipe = Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))
    assert pipe.manager.registry.get("backbone", "tiny_local").plugin == "my_local_stages"
    assert pipe.stages["backbone"].feature_info[0].channels == 5


def test_missing_and_broken_yaml_plugins(tiny_config, write_yaml, tmp_path, monkeypatch):
    tiny_config["plugins"] = ["no_such_plugin_module"]
    with pytest.raises(PluginError, match="plugin module 'no_such_plugin_module' not found"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))
    (tmp_path / "broken_plugin_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_config["plugins"] = ["broken_plugin_mod"]
    with pytest.raises(PluginError, match=r"Error loading plugin 'broken_plugin_mod': RuntimeError: boom at import") as info:
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_stage_returning_the_wrong_type_is_named(tiny_config, write_yaml):
    @stage("backbone", "not_a_backbone")
    def not_a_backbone(width: int = 1) -> int:
        return width

    manager = PluginManager()
    manager.register(_plugin("wrong", not_a_backbone), name="wrong")
    tiny_config["model"]["backbone"] = {"name": "not_a_backbone"}
    with pytest.raises(Exception, match=r"backbone stage 'not_a_backbone' \(plugin 'wrong'\) returned int; a backbone stage must return a vision_pipe.Backbone"):
        Pipeline.from_dict(tiny_config, manager=manager)

