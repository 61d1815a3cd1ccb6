from __future__ import annotations

import signal
import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

# A suite started in the background of a non-interactive shell (`cmd &`) inherits SIGINT
# ignored, and so would every evonnx process the tests start: the Ctrl-C tests need it
# delivered. A handler (unlike an ignored signal) is reset to the default across exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from zoo import ALL_CASES, cached_case


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(params=ALL_CASES)
def zoo_case(request: pytest.FixtureRequest, zoo_dir: Path) -> tuple[str, onnx.ModelProto]:
    return request.param, cached_case(request.param, zoo_dir)
