"""Plugin manager and stage registry: discovery, validation at registration, conflicts, YAML plugins."""

from __future__ import annotations

import json
import textwrap
import types

import cv2
import pytest

from vision_pipe import Pipeline, PluginError, hookimpl, stage
from vision_pipe.plugins import PluginLoadWarning, PluginManager

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


def test_a_plugin_rejected_half_way_leaves_no_stage_behind():
    @stage("backbone", "fine_one")
    def fine_one(width: int = 1):
        return None

    @stage("backbone", "untyped_two")
    def untyped_two(width=1):
        return None

    manager = PluginManager(autoload=False)
    with pytest.raises(PluginError, match="no type hint"):
        manager.register(_plugin("half", fine_one, untyped_two), name="half")
    assert ("backbone", "fine_one") not in manager.registry and "half" not in manager.plugins
    assert not manager.has_plugin("half")
    manager.register(_plugin("half_fixed", fine_one), name="half")  # the name is free again
    assert manager.registry.get("backbone", "fine_one").plugin == "half"


def test_variadic_parameters_are_rejected():
    @stage("augmentation", "anything")
    def anything(p: float = 0.5, **kwargs: int):
        return None

    with pytest.raises(PluginError, match=r"augmentation stage 'anything': parameter '\*kwargs' is not allowed"):
        PluginManager(autoload=False).register(_plugin("p", anything), name="p")


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
    with pytest.raises(PluginError, match="unknown_argument") as info:
        PluginManager(autoload=False).register(bad, name="bad")
    assert str(info.value) == (
        "plugin 'bad': hook 'vision_pipe_before_fit' takes argument(s) 'unknown_argument' that the hook does not "
        "provide. 'vision_pipe_before_fit' provides: pipeline, run_dir (accept any subset of them)"
    )

    @hookimpl
    def vision_pipe_after_fit(pipeline, rundir, metrics):
        pass

    misspelt = types.ModuleType("misspelt")
    misspelt.vision_pipe_after_fit = vision_pipe_after_fit
    with pytest.raises(PluginError, match=r"plugin 'misspelt': hook 'vision_pipe_after_fit' takes argument\(s\) 'rundir'.*Did you mean 'run_dir'\?.*provides: pipeline, run_dir, metrics"):
        PluginManager(autoload=False).register(misspelt, name="misspelt")

    typo = types.ModuleType("typo")
    typo.vision_pipe_befor_fit = hookimpl(lambda pipeline: None)
    with pytest.raises(PluginError, match=r"unknown hook 'vision_pipe_befor_fit'.*Did you mean 'vision_pipe_before_fit'"):
        PluginManager(autoload=False).register(typo, name="typo")
    unmarked = types.ModuleType("unmarked")
    unmarked.vision_pipe_after_tset = lambda pipeline: None  # no @hookimpl: pluggy alone would ignore it
    with pytest.raises(PluginError, match=r"unknown hook 'vision_pipe_after_tset'.*Did you mean 'vision_pipe_after_test'"):
        PluginManager(autoload=False).register(unmarked, name="unmarked")


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


def test_a_yaml_naming_a_module_already_loaded_by_its_entry_point_reuses_it(tiny_config, write_yaml):
    tiny_config["plugins"] = ["vision_pipe_plugins.backbone.vgg"]  # also the entry point 'vgg'
    pipe = Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))
    assert pipe.manager.registry.get("backbone", "vgg").plugin == "vgg"
    assert not pipe.manager.has_plugin("vision_pipe_plugins.backbone.vgg")


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



# ----------------------------------------------------------------------------
# Third-party packages, found through entry points: a fake installed distribution
# (a *.dist-info folder with entry_points.txt) on sys.path is discovered exactly
# like a pip-installed one.
# ----------------------------------------------------------------------------


def _install_fake_distribution(
    root, dist: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "1.2.3"
) -> None:
    """Write ``modules`` and a ``dist``-``version`` dist-info declaring ``entry_points`` under ``root``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text("[vision_pipe.plugins]\n" + lines)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


BROKEN_MODULE = "import numpy\nraise ImportError('cannot import name shiny_op from torchvision.ops')\n"


@pytest.fixture
def broken_package(tmp_path, monkeypatch):
    """An installed package whose plugin 'broken_thing' fails to import."""
    _install_fake_distribution(tmp_path / "site", "broken-vision-things", {"broken_thing": "broken_thing_mod"}, {"broken_thing_mod": BROKEN_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return "broken_thing"


def test_a_broken_plugin_names_itself_and_its_package_with_the_error_chained(broken_package):
    with pytest.warns(PluginLoadWarning, match=r"1 plugin\(s\) failed to load") as caught:
        manager = PluginManager()
    assert len(caught) == 1
    assert "vgg" in manager.plugins and "broken_thing" not in manager.plugins
    error = manager.load_errors["broken_thing"]
    message = str(error)
    assert message.startswith(
        "Error loading plugin 'broken_thing' (package broken-vision-things, module broken_thing_mod): "
        "ImportError: cannot import name shiny_op from torchvision.ops."
    )
    assert "--disable broken_thing" in message and "VISION_PIPE_DISABLE_PLUGINS=broken_thing" in message
    assert isinstance(error.__cause__, ImportError) and "shiny_op" in str(error.__cause__)
    assert message in str(caught[0].message)


def test_all_load_errors_are_collected_in_one_warning(tmp_path, monkeypatch):
    bad_hook = """
from vision_pipe import hookimpl

@hookimpl
def vision_pipe_before_fit(pipeline, rundir):
    pass
"""
    _install_fake_distribution(
        tmp_path, "two-broken", {"broken_a": "broken_a_mod", "broken_b": "broken_b_mod"},
        {"broken_a_mod": "raise RuntimeError('a is broken')\n", "broken_b_mod": bad_hook},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginLoadWarning) as caught:
        manager = PluginManager()
    assert len(caught) == 1
    warning = str(caught[0].message)
    assert "2 plugin(s) failed to load" in warning and "'broken_a'" in warning and "'broken_b'" in warning
    assert sorted(manager.load_errors) == ["broken_a", "broken_b"]
    assert "RuntimeError: a is broken" in str(manager.load_errors["broken_a"])
    b = str(manager.load_errors["broken_b"])
    assert b.startswith("Error loading plugin 'broken_b' (package two-broken, module broken_b_mod): plugin 'broken_b'")
    assert "Did you mean 'run_dir'" in b and "Disable it with --disable broken_b" in b
    assert "broken_b" not in manager.plugins and not manager.hook.vision_pipe_before_fit.get_hookimpls()


def test_a_broken_plugin_fails_only_pipelines_that_need_a_missing_stage(broken_package, tiny_config, write_yaml, monkeypatch, capsys):
    from vision_pipe.cli import main

    path = str(write_yaml("p.yaml", tiny_config))
    assert main(["check", path]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "warning: 1 plugin(s) failed to load:\n  Error loading plugin 'broken_thing' (package broken-vision-things" in err
    tiny_config["model"]["backbone"] = {"name": "shiny_net"}
    missing = str(write_yaml("missing.yaml", tiny_config))
    assert main(["check", missing]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone stage 'shiny_net'" in err
    assert "plugin 'broken_thing' failed to load and may provide it: Error loading plugin 'broken_thing'" in err
    assert main(["check", path, "--disable", "broken_thing"]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out and "warning" not in err
    assert main(["plugins"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("broken_thing "))
    assert "(failed to load)" in line and "ImportError: cannot import name shiny_op" in line
    monkeypatch.setenv("VISION_PIPE_DISABLE_PLUGINS", "broken_thing")
    pipe = Pipeline.from_yaml(path, ["trainer.max_epochs=1"])
    assert "broken_thing" not in pipe.manager.plugins and "vgg" in pipe.manager.plugins
    assert not pipe.manager.load_errors
    assert pipe.fit()["fit/epochs"] == 1.0
    monkeypatch.delenv("VISION_PIPE_DISABLE_PLUGINS")
    monkeypatch.setenv("VISION_PIPE_NO_AUTOLOAD", "1")
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out.strip() == ""


OVERRIDING_MODULE = '''
from vision_pipe import hookimpl, stage
from vision_pipe.testing import BoringBackbone

@stage("backbone", "vgg", override=True)
def better_vgg(width: int = 4) -> BoringBackbone:
    """A vgg that is better in every way."""
    return BoringBackbone(width, 2)

@hookimpl
def vision_pipe_stages():
    return [better_vgg]
'''

CONFLICTING_MODULE = OVERRIDING_MODULE.replace(", override=True", "").replace("better_vgg", "other_vgg")


def test_a_third_party_package_is_listed_with_version_and_stages(tmp_path, monkeypatch, capsys):
    from vision_pipe.cli import main

    _install_fake_distribution(tmp_path, "better-vgg", {"zz_better": "better_vgg_mod"}, {"better_vgg_mod": OVERRIDING_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plugins"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("zz_better "))
    assert line.split() == ["zz_better", "better-vgg", "1.2.3", "backbone:vgg"]


def test_an_override_is_shown_in_stages_and_used_by_pipelines(tmp_path, monkeypatch, capsys, tiny_config):
    from vision_pipe.cli import main

    _install_fake_distribution(tmp_path, "better-vgg", {"zz_better": "better_vgg_mod2"}, {"better_vgg_mod2": OVERRIDING_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["stages", "--kind", "backbone"]) == 0
    out = capsys.readouterr().out
    assert "  vgg  [zz_better (better-vgg), overrides vgg]" in out and "A vgg that is better in every way." in out
    tiny_config["model"]["backbone"] = {"name": "vgg", "width": 3}
    assert type(Pipeline.from_dict(tiny_config).stages["backbone"]).__name__ == "BoringBackbone"
    assert main(["stages", "--kind", "backbone", "--disable", "zz_better"]) == 0
    assert "  vgg  [vgg (vision-pipe)]" in capsys.readouterr().out


def test_an_override_works_whatever_the_plugin_names_order(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "better-vgg", {"aa_better": "better_vgg_mod3"}, {"better_vgg_mod3": OVERRIDING_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = PluginManager().registry.get("backbone", "vgg")
    assert entry.plugin == "aa_better" and entry.overrides == "vgg"


def test_a_conflict_between_packages_names_both_and_the_fix(tmp_path, monkeypatch, capsys):
    from vision_pipe.cli import main

    _install_fake_distribution(tmp_path, "other-vgg", {"zz_other": "other_vgg_mod"}, {"other_vgg_mod": CONFLICTING_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["stages"]) == 2
    err = capsys.readouterr().err
    assert (
        "backbone stage 'vgg' is registered twice: by plugin 'vgg' (package vision-pipe) and by plugin "
        "'zz_other' (package other-vgg). Disable one of the plugins, or mark the intended one with "
        "@stage(..., override=True)"
    ) in err
    assert main(["stages", "--kind", "backbone", "--disable", "zz_other"]) == 0


# ----------------------------------------------------------------------------
# Lifecycle hooks: a plugin that logs every hook call to a file
# ----------------------------------------------------------------------------

HOOK_LOGGER = '''
"""Logs every lifecycle hook, with what it was given, to the JSON-lines file $HOOK_LOG."""
import json
import os
from pathlib import Path

from vision_pipe import hookimpl


def _log(hook, pipeline=None, **fields):
    record = {"hook": hook, "pipeline": id(pipeline) if pipeline is not None else None, **fields}
    with open(os.environ["HOOK_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\\n")


def _run_dir(run_dir):
    return {"run_dir": str(run_dir), "is_path": isinstance(run_dir, Path), "has_config": (run_dir / "config.yaml").is_file()}


@hookimpl
def vision_pipe_config_resolved(config):
    _log("vision_pipe_config_resolved", config_is_dict=isinstance(config, dict), name=config["name"])
    config["seed"] = 3  # a hook may adjust the config before validation


@hookimpl
def vision_pipe_pipeline_built(pipeline):
    _log("vision_pipe_pipeline_built", pipeline, stages=sorted(pipeline.stages), seed=pipeline.config.seed)


@hookimpl
def vision_pipe_before_fit(pipeline, run_dir):
    _log("vision_pipe_before_fit", pipeline, **_run_dir(run_dir))


@hookimpl
def vision_pipe_after_fit(pipeline, run_dir, metrics):
    _log("vision_pipe_after_fit", pipeline, **_run_dir(run_dir), metrics=sorted(metrics))


@hookimpl
def vision_pipe_before_test(pipeline, run_dir):
    _log("vision_pipe_before_test", pipeline, **_run_dir(run_dir))


@hookimpl
def vision_pipe_after_test(pipeline, run_dir, metrics):
    written = json.loads((run_dir / "metrics.json").read_text())
    _log("vision_pipe_after_test", pipeline, **_run_dir(run_dir), metrics=sorted(metrics),
         written=all(k in written for k in metrics if k.startswith("test/")))


@hookimpl
def vision_pipe_before_predict(pipeline, inputs):
    _log("vision_pipe_before_predict", pipeline, inputs=[str(i) for i in inputs])


@hookimpl
def vision_pipe_after_predict(pipeline, predictions):
    _log("vision_pipe_after_predict", pipeline, predictions=[type(p).__name__ for p in predictions])


@hookimpl
def vision_pipe_on_error(pipeline, action, error):
    _log("vision_pipe_on_error", pipeline, action=action, error=type(error).__name__, message=str(error))
'''


def test_lifecycle_hooks_are_called_in_order_with_their_documented_arguments(tiny_config, write_yaml, tmp_path, monkeypatch):
    from vision_pipe import hookspecs

    (tmp_path / "hook_logger_plugin.py").write_text(HOOK_LOGGER)
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / "hooks.jsonl"
    monkeypatch.setenv("HOOK_LOG", str(log))
    tiny_config["plugins"] = ["hook_logger_plugin"]
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))
    pipe.fit()
    pipe.test()
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), pipe.splits["test"][0]["image"])
    pipe.predict([image])
    with pytest.raises(Exception) as failure:
        pipe.predict([tmp_path / "missing.png"])

    records = [json.loads(line) for line in log.read_text().splitlines()]
    order = [r["hook"].removeprefix("vision_pipe_") for r in records]
    assert order == [
        "config_resolved", "pipeline_built", "before_fit", "after_fit", "before_test", "after_test",
        "before_predict", "after_predict", "before_predict", "on_error",
    ]  # fmt: skip
    specs = {name for name in dir(hookspecs) if name.startswith("vision_pipe_") and name != "vision_pipe_stages"}
    assert {r["hook"] for r in records} == specs, "every lifecycle hook is exercised"
    for name in specs:
        assert getattr(hookspecs, name).__doc__, f"{name} is documented"
    by_hook = {r["hook"].removeprefix("vision_pipe_"): r for r in records}
    assert by_hook["config_resolved"] == {"hook": "vision_pipe_config_resolved", "pipeline": None, "config_is_dict": True, "name": "tiny"}
    assert by_hook["pipeline_built"]["seed"] == 3 and pipe.config.seed == 3
    assert by_hook["pipeline_built"]["stages"] == ["augmentation", "backbone", "head", "loading", "normalization"]
    assert {r["pipeline"] for r in records[1:]} == {id(pipe)}
    for hook in ("before_fit", "after_fit", "before_test", "after_test"):
        assert by_hook[hook]["run_dir"] == str(pipe.run_dir) and by_hook[hook]["is_path"] and by_hook[hook]["has_config"]
    assert "val/loss" in by_hook["after_fit"]["metrics"] and "test/acc" in by_hook["after_test"]["metrics"]
    assert by_hook["after_test"]["written"] is True
    assert records[6]["inputs"] == [str(image)] and records[7]["predictions"] == ["ClassificationPrediction"]
    assert by_hook["on_error"]["action"] == "predict"
    assert by_hook["on_error"]["error"] == type(failure.value).__name__ and "missing.png" in by_hook["on_error"]["message"]
