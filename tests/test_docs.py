"""The docs cannot rot: the plugin guide's listings are the example's files, and docs/stages.md is current.

(The guide's commands and Python snippet are run on the installed example in
``tests/test_examples.py``.)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import albumentations
import pytest

from vision_pipe import ContractError
from vision_pipe.cli import main
from vision_pipe.plugins import PluginManager
from vision_pipe.stage_docs import (
    REGENERATE,
    builtin_entries,
    render_builtin,
    render_markdown,
)
from vision_pipe.testing import check_backbone

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-plugin.md"
EXAMPLE = ROOT / "examples" / "vision_pipe_stripes"
STAGES_MD = ROOT / "docs" / "stages.md"
_FILE_BLOCK = re.compile(r"^```\w+ file=(\S+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _guide_files() -> dict[str, str]:
    """``{relative path: content}`` of the guide's listings marked ``file=PATH``."""
    return {path: body for path, body in _FILE_BLOCK.findall(GUIDE.read_text(encoding="utf-8"))}


def _example_files() -> dict[str, str]:
    skip = {"__pycache__", "build"}
    return {
        p.relative_to(EXAMPLE).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(EXAMPLE.rglob("*"))
        if p.is_file() and not skip & set(p.parts) and ".egg-info" not in p.as_posix()
    }


def test_the_guide_lists_every_file_of_the_example_package_verbatim():
    guide, example = _guide_files(), _example_files()
    assert sorted(guide) == sorted(example), "the guide must show every file of examples/vision_pipe_stripes"
    for path, content in example.items():
        assert guide[path] == content, f"docs/writing-a-plugin.md's listing of {path} differs from examples/vision_pipe_stripes/{path}"


def test_the_readme_links_the_guide_and_the_reference():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/writing-a-plugin.md)" in readme and "(docs/stages.md)" in readme


@pytest.fixture
def stripes_module(monkeypatch):
    """The example's stages module imported from the source tree (no install needed)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    for name in [m for m in sys.modules if m.startswith("vision_pipe_stripes")]:
        monkeypatch.delitem(sys.modules, name)
    import vision_pipe_stripes.stages as module

    yield module
    for name in [m for m in sys.modules if m.startswith("vision_pipe_stripes")]:
        del sys.modules[name]


def test_the_guides_quoted_kit_failure_is_what_the_kit_says(stripes_module):
    class WrongStride(stripes_module.TinyConvNet):
        def __init__(self, width: int) -> None:
            super().__init__(width)
            self.feature_info[1] = type(self.feature_info[1])("c2", 2 * width, 8)

    with pytest.raises(ContractError) as info:
        check_backbone(WrongStride(4))
    quoted = re.search(r"the check would\nsay: `(.*?)`\.", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    assert quoted is not None
    message = " ".join(quoted.group(1).split())
    assert message.replace("backbone stage 'tiny_convnet'", "backbone stage WrongStride") == str(info.value)


# ----------------------------------------------------------------------------
# docs/stages.md
# ----------------------------------------------------------------------------


def _without_augmentation(text: str) -> str:
    """``text`` without its augmentation section and contents line (albumentations' own docs)."""
    text = re.sub(r"^- \*\*augmentation\*\*.*\n", "", text, flags=re.MULTILINE)
    text = re.sub(r"^augmentation stages are the transforms of albumentations \S+", "", text, flags=re.MULTILINE)
    return re.sub(r"^## augmentation\n.*?(?=^## )", "", text, flags=re.DOTALL | re.MULTILINE)


def test_stages_md_is_current():
    generated = render_builtin()
    current = STAGES_MD.read_text(encoding="utf-8") if STAGES_MD.exists() else ""
    recorded = re.search(r"albumentations (\S+?)\. ", current)
    if recorded is None or recorded.group(1) != albumentations.__version__:
        # Another albumentations than the one the file was made with: compare vision-pipe's own stages.
        generated, current = _without_augmentation(generated), _without_augmentation(current)
    assert current == generated, f"docs/stages.md is stale: regenerate it with `{REGENERATE}`"


def test_the_reference_documents_every_builtin_stage_deterministically():
    manager = PluginManager()
    entries = builtin_entries(manager)
    text = render_markdown(entries)
    assert text == render_markdown(reversed(entries))
    for entry in entries:
        assert f"### `{entry.name}`" in text
    assert re.search(r" at 0x[0-9a-f]+", text) is None and str(ROOT) not in text
    vgg = text[text.index("### `vgg`") :].split("\n### ")[0]
    assert "| `depth` | `8 \\| 11 \\| 13 \\| 16 \\| 19` | `11` |" in vgg and "| `width` | `int ≥ 1` | `64` |" in vgg
    assert "| `activation` | `'relu' \\| 'leaky_relu' \\| 'elu'` | `'relu'` |" in vgg
    assert "width: channels of the first stage" in vgg  # the docstring
    assert "| `root` | `Path` | required |" in text


def test_stages_markdown_from_the_cli(capsys):
    assert main(["stages", "--kind", "backbone", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Stage reference") and "`vision-pipe stages --markdown --kind backbone`" in out
    assert "### `vgg`" in out and "### `resnet`" in out and "## head" not in out


def test_the_regenerate_command_checks_and_writes(tmp_path, capsys):
    from vision_pipe.stage_docs import main as stage_docs

    target = tmp_path / "stages.md"
    assert stage_docs(["--check", str(target)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert stage_docs(["--output", str(target)]) == 0
    assert stage_docs(["--check", str(target)]) == 0
