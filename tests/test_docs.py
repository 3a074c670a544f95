"""The Python examples in the docs run as written."""

import re
from pathlib import Path

import pytest

from xaijax import importance

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.fixture
def restored_registry():
    """The examples register criteria; the other tests of this process must not see them."""
    saved = dict(importance.CRITERIA)
    yield
    importance.CRITERIA.clear()
    importance.CRITERIA.update(saved)


@pytest.mark.parametrize("page", ["api.md"])
def test_doc_examples_run(page, restored_registry):
    blocks = python_blocks(DOCS / page)
    assert blocks, f"no python example in docs/{page}"
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), {"__name__": f"docs_{page}"})
