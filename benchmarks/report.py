"""Write one named section of docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
TITLE = (
    "# Benchmarks\n\n"
    "Written by the scripts in `benchmarks/`; each section is replaced when its script runs.\n"
)


def machine() -> str:
    """One line describing where the numbers were taken."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def update_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section delimited by ``<!-- name:start/end -->`` atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else TITLE
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=doc.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, doc)
