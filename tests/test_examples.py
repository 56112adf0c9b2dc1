"""The example third-party package ``examples/vision_pipe_stripes``, installed into the test environment.

A session fixture pip-installs (a copy of) the example — a regular, non-editable
install, as a user would after ``pip install vision-pipe-stripes`` — and
uninstalls it afterwards. Its stages are then found through the entry-point
group alone: no ``plugins:`` list, no ``sys.path`` tricks.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vision_pipe import Pipeline, VisionPipeError
from vision_pipe.cli import main
from vision_pipe.plugins import PluginManager

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vision_pipe_stripes"
DISTRIBUTION = "vision-pipe-stripes"
MODULE = "vision_pipe_stripes"


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )


def _forget_module() -> None:
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture(scope="session")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Install a copy of the example package (offline when setuptools is present); uninstall at the end."""
    source = tmp_path_factory.mktemp("example") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    result = _pip("install", "--no-deps", "--force-reinstall", *offline, str(source))
    if result.returncode != 0:
        pytest.fail(f"pip install of the example failed:\n{result.stdout}\n{result.stderr}")
    _forget_module()
    try:
        yield source
    finally:
        _pip("uninstall", "-y", DISTRIBUTION)
        _forget_module()


def _overrides(tmp_path: Path) -> list[str]:
    return [f"output_dir={tmp_path / 'runs'}"]


def test_a_fresh_process_lists_the_plugin_its_package_and_stages(installed_example):
    script = Path(sys.executable).with_name("vision-pipe")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "vision_pipe.cli"]
    out = subprocess.run([*command, "plugins"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("stripes "))
    assert line.split() == [
        "stripes",
        DISTRIBUTION,
        "0.1.0",
        "loading:stripes,",
        "normalization:per_image,",
        "backbone:tiny_convnet,",
        "head:multiscale",
    ]


def test_the_stages_are_discovered_through_the_entry_point(installed_example, capsys):
    manager = PluginManager()
    info = manager.plugins["stripes"]
    assert (info.distribution, info.version, info.module) == (DISTRIBUTION, "0.1.0", f"{MODULE}.stages")
    assert info.stages == [
        ("loading", "stripes"),
        ("normalization", "per_image"),
        ("backbone", "tiny_convnet"),
        ("head", "multiscale"),
    ]
    listed = {
        "loading": ["  stripes  [stripes (vision-pipe-stripes)]", "      size: int ≥ 8 = 32"],
        "normalization": ["  per_image  [stripes (vision-pipe-stripes)]", "      min_std: float > 0 = 1.0"],
        "backbone": ["  tiny_convnet  [stripes (vision-pipe-stripes)]", "      width: int ≥ 1 = 16"],
        "head": ["  multiscale  [stripes (vision-pipe-stripes)]", "      pooling: 'avg' | 'max' = 'avg'"],
    }
    for kind, lines in listed.items():
        assert main(["stages", "--kind", kind]) == 0
        out = capsys.readouterr().out.splitlines()
        assert all(line in out for line in lines), (kind, lines)


def test_the_example_pipeline_runs_through_the_cli(installed_example, tmp_path, capsys):
    pipeline = installed_example / "pipeline.yaml"
    assert main(["check", str(pipeline)]) == 0
    out = capsys.readouterr().out
    assert "normalization per_image" in out and "head          multiscale  (" in out
    assert "backbone      tiny_convnet: c1(c=8, stride=2), c2(c=16, stride=4)" in out
    assert main(["fit", str(pipeline), *_overrides(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test/acc" in out and "run directory:" in out
    (run_dir,) = (tmp_path / "runs" / "stripes").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    # The head implements forward, loss and decode only: its metrics and plots are the task's.
    assert "test/acc_top5" in metrics and (run_dir / "plots" / "test" / "confusion_matrix.png").is_file()


def test_the_example_pipeline_runs_through_the_python_api(installed_example, tmp_path):
    pipe = Pipeline.from_yaml(installed_example / "pipeline.yaml", _overrides(tmp_path))
    for kind in ("normalization", "backbone", "head"):
        assert type(pipe.stages[kind]).__module__ == f"{MODULE}.stages", kind
    assert pipe.class_names == ["horizontal", "vertical"]
    metrics = pipe.fit()
    assert metrics["fit/epochs"] == 1.0 and "val/acc" in metrics
    predictions = pipe.predict([pipe.splits["test"][0]["image"]], out=tmp_path / "predicted")
    assert predictions[0].class_name in pipe.class_names
    assert (tmp_path / "predicted" / "array_0_pred.png").is_file()  # drawn by the classification task


def test_disabling_the_plugin_makes_its_stages_unknown(installed_example, monkeypatch, capsys):
    pipeline = str(installed_example / "pipeline.yaml")
    assert main(["check", pipeline, "--disable", "stripes"]) == 2
    assert "unknown loading stage 'stripes'" in capsys.readouterr().err
    monkeypatch.setenv("VISION_PIPE_DISABLE_PLUGINS", "stripes")
    with pytest.raises(VisionPipeError, match="unknown loading stage 'stripes'"):
        Pipeline.from_yaml(pipeline)


def test_the_example_package_own_tests_pass(installed_example):
    spec = importlib.util.spec_from_file_location("example_own_tests", installed_example / "tests" / "test_stages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, name) for name in dir(module) if name.startswith("test_")]
    assert len(tests) == 6
    for test in tests:
        test()


# ----------------------------------------------------------------------------
# docs/writing-a-plugin.md, run on the installed example
# ----------------------------------------------------------------------------

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md"
#: Commands of the guide that the fixture stands in for (install) or another test runs (pytest).
NOT_RUN_HERE = {"pip install -e .", "pytest"}


def _blocks(info: str) -> list[str]:
    """The guide's fenced blocks whose info string is exactly ``info``."""
    return re.findall(rf"^```{info}\n(.*?)^```$", GUIDE.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def _guide_commands() -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` from the guide's console blocks (``...`` lines dropped)."""
    commands: list[tuple[str, list[str]]] = []
    for block in _blocks("console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:].strip(), []))
            elif line.strip() and line.strip() != "...":
                commands[-1][1].append(line)
    return commands


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_the_guides_commands_print_what_the_guide_shows(installed_example, monkeypatch, capsys):
    monkeypatch.chdir(installed_example)
    commands = _guide_commands()
    assert {c for c, _ in commands if not c.startswith("vision-pipe ")} == NOT_RUN_HERE
    ran = 0
    for command, expected in commands:
        if not command.startswith("vision-pipe "):
            continue
        assert main(shlex.split(command)[1:]) == 0, command
        out = {_squash(line) for line in capsys.readouterr().out.splitlines()}
        missing = [line for line in expected if _squash(line) not in out]
        assert not missing, f"`{command}` no longer prints {missing}: update docs/writing-a-plugin.md"
        ran += 1
    assert ran == 4


def test_the_guides_python_snippets_run(installed_example, monkeypatch, capsys):
    monkeypatch.chdir(installed_example)
    snippets = [s for s in _blocks("python") if "Pipeline.from_yaml" in s]
    assert len(snippets) == 1
    exec(compile(snippets[0], str(GUIDE), "exec"), {})  # noqa: S102 -- the guide's own snippet, on purpose
    assert 0.0 <= float(capsys.readouterr().out.strip().splitlines()[-1]) <= 1.0


def test_the_guides_quoted_parameter_error_is_what_the_cli_says(installed_example, monkeypatch, capsys):
    monkeypatch.chdir(installed_example)
    (quoted,) = [b.strip() for b in _blocks("text") if "must be ≥ 1" in b]
    override = re.search(r"override '(\S+)'", quoted)
    assert override is not None
    assert main(["check", "pipeline.yaml", override.group(1)]) == 2
    assert quoted in capsys.readouterr().err.splitlines()
