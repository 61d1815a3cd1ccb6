from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from zoo import ALL_CASES, cached_case


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(params=ALL_CASES)
def zoo_case(request: pytest.FixtureRequest, zoo_dir: Path) -> tuple[str, onnx.ModelProto]:
    return request.param, cached_case(request.param, zoo_dir)
