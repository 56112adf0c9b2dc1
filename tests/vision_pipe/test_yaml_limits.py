"""A YAML alias bomb (billion laughs) or a recursive alias is refused fast, with little memory, naming file and line."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from vision_pipe.cli import main
from vision_pipe.config_files import Locations, apply_overrides, load_yaml_with_bases, read_yaml
from vision_pipe.errors import ConfigError


def _bomb() -> str:
    """About 430 bytes that expand to 9^9 (≈ 387 million) strings."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_a_config_error_in_well_under_a_second_and_100_mb(write_yaml):
    text = _bomb()
    assert len(text.encode()) < 450
    path = write_yaml("bomb.yaml", text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_yaml_with_bases(path)
    assert time.perf_counter() - start < 1.0  # about 0.15 s
    message = str(info.value)
    assert message.startswith(f"{path}:") and "alias bomb" in message and "100000" in message
    tracemalloc.start()  # measured apart: tracing makes it several times slower
    try:
        with pytest.raises(ConfigError):
            load_yaml_with_bases(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20


def test_check_refuses_an_alias_bomb_with_exit_2(write_yaml, capsys):
    path = write_yaml("bomb.yaml", "base: x\n" + _bomb())
    assert main(["check", str(path)]) == 2  # (the time bound: the test above; this one includes imports)
    err = capsys.readouterr().err
    assert f"{path}:" in err and "alias bomb" in err and "Traceback" not in err


def test_a_recursive_alias_is_refused_with_its_line(write_yaml):
    path = write_yaml("rec.yaml", "name: x\ndata: &d\n  loader: [*d]\n")
    with pytest.raises(ConfigError, match=r"rec\.yaml:\d+: .*nests deeper"):
        read_yaml(path)


def test_deep_nesting_and_non_scalar_keys_are_config_errors(write_yaml):
    with pytest.raises(ConfigError, match="nest"):
        read_yaml(write_yaml("deep.yaml", "a: " + "[" * 2000 + "]" * 2000 + "\n"))
    with pytest.raises(ConfigError, match=r"keys\.yaml:2: .*a key must be a plain value"):
        read_yaml(write_yaml("keys.yaml", "name: x\n? [1, 2]\n: 3\n"))


def test_aliases_within_the_limit_still_work(write_yaml):
    path = write_yaml("ok.yaml", "name: x\nshared: &s {a: 1, b: [1, 2]}\nfirst: *s\nsecond: *s\n")
    data, locs = read_yaml(path)
    assert data["first"] == data["second"] == {"a": 1, "b": [1, 2]}
    assert locs.find(("second",)) == f"{path}:4"


def test_an_override_value_is_bounded_too():
    bomb = (
        "["
        + ",".join(
            ["&a0 [x,x,x,x,x,x,x,x,x,x]"] + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
        )
        + "]"
    )
    with pytest.raises(ConfigError, match=r"override 'x=.*alias bomb"):
        apply_overrides({}, [f"x={bomb}"], Locations())
