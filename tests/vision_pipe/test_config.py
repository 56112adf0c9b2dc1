"""Pipeline YAML: schema errors with file:line and did-you-mean, ``base:``, overrides, chain checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vision_pipe import ChainError, ConfigError, Pipeline, VisionPipeError
from vision_pipe.config_files import Locations, apply_overrides, load_yaml_with_bases


def _line_of(path: Path, text: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return i
    raise AssertionError(f"{text!r} not in {path}")


def test_valid_yaml_builds_and_fills_defaults(tiny_config, write_yaml):
    pipe = Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))
    assert pipe.config.task == "classification"
    # stage parameters not given in the YAML are filled in from the factory's defaults
    assert pipe.resolved["model"]["backbone"]["activation"] == "relu"
    assert pipe.resolved["data"]["loader"]["shapes"] == ["circle", "square", "triangle"]
    assert pipe.class_names == ["circle", "square", "triangle"]
    assert {k: len(v) for k, v in pipe.splits.items()} == {"train": 36, "val": 12, "test": 12}


def test_misspelled_top_level_key_names_file_line_and_suggestion(tiny_config, write_yaml):
    tiny_config["optimiser"] = tiny_config.pop("optimizer")
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path)
    msg = str(info.value)
    assert f"{path}:{_line_of(path, 'optimiser:')}" in msg
    assert "unknown key 'optimiser'" in msg and "Did you mean 'optimizer'" in msg


def test_misspelled_nested_key(tiny_config, write_yaml):
    tiny_config["data"]["batchsize"] = 8
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(ConfigError, match=r"data\.batchsize: unknown key 'batchsize'.*Did you mean 'batch_size'"):
        Pipeline.from_yaml(path)


def test_unknown_stage_parameter_suggests_the_factory_parameter(tiny_config, write_yaml):
    tiny_config["model"]["backbone"]["widht"] = 8
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path)
    msg = str(info.value)
    assert f"{path}:{_line_of(path, 'widht')}" in msg
    assert "model.backbone.widht" in msg and "Did you mean 'width'" in msg


def test_wrong_parameter_type(tiny_config, write_yaml):
    tiny_config["model"]["backbone"]["width"] = "wide"
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path)
    msg = str(info.value)
    assert f"{path}:{_line_of(path, 'width: wide')}" in msg
    assert "model.backbone.width" in msg and "'wide'" in msg and "backbone stage 'vgg'" in msg


def test_wrong_choice_lists_valid_values(tiny_config, write_yaml):
    tiny_config["model"]["backbone"]["activation"] = "gelu"
    with pytest.raises(ConfigError, match=r"model\.backbone\.activation.*'relu'.*'leaky_relu'.*'elu'"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))


def test_unknown_stage_name_lists_available_and_suggests(tiny_config, write_yaml):
    tiny_config["model"]["backbone"]["name"] = "vgj"
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path)
    msg = str(info.value)
    assert "unknown backbone stage 'vgj'" in msg and "Did you mean 'vgg'" in msg
    assert "resnet" in msg and f"{path}:" in msg and "model.backbone.name" in msg


def test_stage_of_the_wrong_kind(tiny_config, write_yaml):
    tiny_config["model"]["backbone"]["name"] = "classification"
    tiny_config["model"]["backbone"] = {"name": "classification"}
    with pytest.raises(ConfigError, match="'classification' is a head stage, not a backbone stage"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))


def test_unknown_augmentation_suggests_albumentations_name(tiny_config, write_yaml):
    tiny_config["data"]["augmentation"] = [{"name": "HorizontalFlip"}, {"name": "VerticalFlp", "p": 0.5}]
    with pytest.raises(ConfigError, match=r"data\.augmentation\.1\.name.*Did you mean 'VerticalFlip'"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))


def test_yaml_syntax_error_names_file_and_line(write_yaml):
    path = write_yaml("bad.yaml", "name: x\ndata:\n  loader: [unclosed\nmodel: {}\n")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path)
    assert str(path) in str(info.value) and "YAML syntax error" in str(info.value)


def test_duplicate_key_is_an_error(write_yaml):
    path = write_yaml("dup.yaml", "name: a\nseed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: seed: key 'seed' appears twice \(first on line 2\)"):
        load_yaml_with_bases(path)


def test_missing_file_and_missing_required_key(tmp_path, tiny_config, write_yaml):
    with pytest.raises(ConfigError, match="pipeline file not found"):
        Pipeline.from_yaml(tmp_path / "nope.yaml")
    del tiny_config["model"]
    with pytest.raises(ConfigError, match="required key 'model' is missing"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))


def test_unknown_trainer_argument(tiny_config, write_yaml):
    tiny_config["trainer"]["max_epoch"] = 3
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch: unknown Trainer argument.*Did you mean 'max_epochs'"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))


def test_base_inheritance_over_several_levels_with_relative_paths(tiny_config, write_yaml):
    write_yaml("configs/base/root.yaml", tiny_config)
    write_yaml("configs/mid.yaml", {"base": "base/root.yaml", "model": {"backbone": {"width": 6}}, "seed": 3})
    leaf = write_yaml("leaf/leaf.yaml", {"base": "../configs/mid.yaml", "name": "leaf", "seed": 5})
    data, locs = load_yaml_with_bases(leaf)
    assert data["name"] == "leaf" and data["seed"] == 5
    assert data["model"]["backbone"] == {"name": "vgg", "depth": 8, "width": 6, "stages": 2}
    assert data["trainer"]["max_epochs"] == 2
    assert "base" not in data
    # each value is located in the file that set it
    assert locs.find(("seed",)).startswith(str(leaf.resolve()) if False else str(leaf))
    assert "mid.yaml" in locs.find(("model", "backbone", "width"))
    assert "root.yaml" in locs.find(("trainer", "max_epochs"))


def test_base_cycle_and_missing_base(write_yaml):
    write_yaml("a.yaml", {"base": "b.yaml", "name": "a"})
    b = write_yaml("b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_with_bases(b)
    c = write_yaml("c.yaml", {"base": "missing.yaml"})
    with pytest.raises(ConfigError, match="base file not found"):
        load_yaml_with_bases(c)


def test_changing_a_stage_name_in_a_child_drops_the_parents_parameters(tiny_config, write_yaml):
    write_yaml("root.yaml", tiny_config)
    child = write_yaml("child.yaml", {"base": "root.yaml", "model": {"backbone": {"name": "resnet", "depth": 10}}})
    data, _ = load_yaml_with_bases(child)
    assert data["model"]["backbone"] == {"name": "resnet", "depth": 10}


def test_overrides_are_typed_by_yaml_and_schema(tiny_config, write_yaml):
    pipe = Pipeline.from_yaml(
        write_yaml("p.yaml", tiny_config),
        ["trainer.max_epochs=3", "model.head.dropout=0.2", "data.input_size=[8, 12]", "optimizer.name=sgd"],
    )
    assert pipe.config.trainer["max_epochs"] == 3
    assert pipe.resolved["model"]["head"]["dropout"] == 0.2
    assert pipe.config.data.input_size == (8, 12)
    assert pipe.config.optimizer.name == "sgd"


def test_override_errors_name_the_override(tiny_config, write_yaml):
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(ConfigError, match=r"override 'model.head.dropuot=0.2'.*Did you mean 'dropout'"):
        Pipeline.from_yaml(path, ["model.head.dropuot=0.2"])
    with pytest.raises(ConfigError, match=r"override 'data.batch_size=many'.*data\.batch_size"):
        Pipeline.from_yaml(path, ["data.batch_size=many"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["no_equals_sign"], Locations())


def test_override_into_a_list_item(tiny_config):
    locs = Locations()
    data = apply_overrides(tiny_config, ["data.augmentation.0.p=0.25"], locs)
    assert data["data"]["augmentation"][0] == {"name": "HorizontalFlip", "p": 0.25}
    assert tiny_config["data"]["augmentation"][0]["p"] == 0.5  # the input is not modified
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(tiny_config, ["data.augmentation.5.p=1"], locs)


def test_chain_loader_task_must_match_head(tiny_config, write_yaml, tmp_path):
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    tiny_config["data"]["loader"] = {"name": "synthetic_shapes", "num_images": 10, "size": 16}
    tiny_config["task"] = "segmentation"
    with pytest.raises(ChainError, match=r"head 'classification' solves classification.*'segmentation'.*synthetic_shapes"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))


def test_head_feature_must_exist_in_backbone(tiny_config, write_yaml):
    tiny_config["model"]["head"]["feature"] = "stage9"
    with pytest.raises(ChainError, match=r"vgg.*stage1.*stage2"):
        Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))


def test_stage_factory_error_names_stage_and_location(tiny_config, write_yaml):
    tiny_config["model"]["backbone"]["depth"] = 7
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(Exception) as info:
        Pipeline.from_yaml(path)
    msg = str(info.value)
    assert str(path) in msg and "model.backbone" in msg and "'vgg'" in msg and "11" in msg


def test_from_dict_validates_the_same_way(tiny_config):
    tiny_config["seed"] = "abc"
    with pytest.raises(ConfigError, match=r"seed: .*'abc'"):
        Pipeline.from_dict(tiny_config)


def test_resolved_config_round_trips(tiny_config, write_yaml, tmp_path):
    pipe = Pipeline.from_yaml(write_yaml("p.yaml", tiny_config))
    again = write_yaml("again.yaml", yaml.safe_dump(pipe.resolved))
    assert Pipeline.from_yaml(again).resolved == pipe.resolved


def test_override_changing_a_stage_name_starts_from_the_new_stages_defaults(tiny_config, write_yaml):
    path = write_yaml("p.yaml", tiny_config)  # vgg with depth 8, which resnet does not take
    pipe = Pipeline.from_yaml(path, ["model.backbone.name=resnet", "model.backbone.width=4"])
    assert pipe.resolved["model"]["backbone"]["depth"] == 18 and pipe.resolved["model"]["backbone"]["width"] == 4
    # other overrides of the renamed stage apply whatever their order
    pipe = Pipeline.from_yaml(path, ["model.backbone.width=4", "model.backbone.stages=2", "model.backbone.name=resnet"])
    assert pipe.resolved["model"]["backbone"]["name"] == "resnet" and pipe.resolved["model"]["backbone"]["stages"] == 2
    # the same name keeps the parameters
    data = apply_overrides(tiny_config, ["model.backbone.name=vgg"], Locations())
    assert data["model"]["backbone"] == tiny_config["model"]["backbone"]
    # a list item (augmentation) too
    data = apply_overrides(tiny_config, ["data.augmentation.0.name=VerticalFlip"], Locations())
    assert data["data"]["augmentation"][0] == {"name": "VerticalFlip"}


def test_override_replaces_a_mapping_wholesale(tiny_config, write_yaml):
    path = write_yaml("p.yaml", tiny_config)
    pipe = Pipeline.from_yaml(path, ["model.backbone={name: vgg, depth: 11, width: 4, stages: 2}"])
    assert pipe.resolved["model"]["backbone"]["depth"] == 11 and pipe.resolved["model"]["backbone"]["width"] == 4
    data = apply_overrides(tiny_config, ["model.head={name: classification}"], Locations())
    assert data["model"]["head"] == {"name": "classification"}  # dropout is gone


def test_override_deletes_a_key(tiny_config, write_yaml):
    path = write_yaml("p.yaml", tiny_config)
    pipe = Pipeline.from_yaml(path, ["~model.head.dropout", "~data.normalization"])
    assert pipe.resolved["model"]["head"]["dropout"] == 0.0  # the head's default
    assert pipe.config.data.normalization is None and pipe.stages["normalization"] is None
    data = apply_overrides(tiny_config, ["~data.augmentation.0"], Locations())
    assert data["data"]["augmentation"] == []
    with pytest.raises(ConfigError, match=r"override '~model.head.dropuot'.*no such key.*Did you mean 'dropout'"):
        apply_overrides(tiny_config, ["~model.head.dropuot"], Locations())
    with pytest.raises(ConfigError, match=r"override '~model.nothing.here'.*there is no 'model.nothing'"):
        apply_overrides(tiny_config, ["~model.nothing.here"], Locations())
    with pytest.raises(ConfigError, match="takes no value"):
        apply_overrides(tiny_config, ["~model.head.dropout=1"], Locations())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.head.dropout=2", r"dropout"),  # bad stage parameter value
        ("model.head.dropuot=0.2", r"unknown parameter 'dropuot'"),  # unknown stage parameter
        ("model.backbone.name=vgj", r"unknown backbone stage 'vgj'"),  # unknown stage
        ("model.backbone.name=resnet", None),  # fine: resnet's defaults
        ("model.backbone={name: vgg, depht: 3}", r"unknown parameter 'depht'"),  # inside a replaced mapping
        ("data.augmentation.0.pp=1", r"unknown parameter 'pp'"),  # inside a list item
        ("data.batch_size=0", r"greater than or equal to 1"),  # bad schema value
        ("data.bach_size=3", r"unknown key 'bach_size'"),  # unknown schema key
        ("data.extra.deep=3", r"unknown key 'extra'"),  # unknown key, several levels deep
        ("trainer.max_epoch=3", r"unknown Trainer argument 'max_epoch'"),
        ("optimizer={name: adamm}", r"adamm"),
        ("~model.head", r"required key 'head' is missing"),
    ],
)
def test_every_error_an_override_causes_names_the_override(tiny_config, write_yaml, override, message):
    path = write_yaml("p.yaml", tiny_config)
    if message is None:
        Pipeline.from_yaml(path, [override])
        return
    with pytest.raises(VisionPipeError, match=message) as info:  # ConfigError, or a factory's StageError
        Pipeline.from_yaml(path, [override])
    assert f"override '{override}'" in str(info.value)
