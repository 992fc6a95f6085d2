"""README.md: every ```python block runs as it is pasted, the quick start writes only into
ignored folders, and the install section names the editable install for development."""
import re
from pathlib import PurePosixPath

import pytest
import torch

from conftest import REPO

README = (REPO / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def section(title: str) -> str:
    """The text of the README's ``## title`` section."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def test_the_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)),
                         ids=[f"block{i + 1}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs_as_is(index, monkeypatch):
    pytest.importorskip("cv2", reason="the README's editing needs opencv-python-headless<5")
    monkeypatch.chdir(REPO)  # the blocks use paths relative to the repository root
    threads = torch.get_num_threads()
    try:
        code = compile(PYTHON_BLOCKS[index], f"README.md python block {index + 1}", "exec")
        exec(code, {"__name__": "__readme__"})  # a fresh namespace, as in a new session
    finally:
        torch.set_num_threads(threads)


def test_quick_start_writes_into_an_ignored_folder():
    outputs = re.findall(r"exprfast (?:edit|grid) .*?-o (\S+)", section("Quick start"))
    assert outputs
    ignored = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip().endswith("/") and not line.startswith("#")}
    for output in outputs:
        parts = PurePosixPath(output).parts
        assert len(parts) > 1 and parts[0] in ignored, f"{output} is not in an ignored folder"


def test_install_recommends_the_editable_install_for_development():
    assert "pip install --no-build-isolation -e ." in section("Install")
