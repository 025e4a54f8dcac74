import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPELINE_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a clean skip when that folder (or the file) is not here."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared absent)")
    return path


def shared_cases(*parts: str) -> list[str]:
    folder = SHARED.joinpath(*parts)
    return (
        sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_")) if folder.exists() else []
    )


@pytest.fixture
def tiny_file(tmp_path):
    """The weights tests' tiny net (tests/weights_util.py) saved as tiny.caffemodel: (net, path)."""
    from weights_util import tiny_net

    from pipeline.weights.io import save_caffemodel

    net = tiny_net()
    path = tmp_path / "tiny.caffemodel"
    save_caffemodel(net, path)
    return net, path
