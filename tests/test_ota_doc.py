"""docs/ota.md shows the bytes the code makes: the worked example of tests/test_ota.py, copied into the document."""

from __future__ import annotations

from pathlib import Path

from tests.test_ota import EXAMPLE_CLEAR_TAIL, EXAMPLE_DATA, EXAMPLE_PACKET, EXAMPLE_POR, EXAMPLE_POR_CLEAR


def test_documented_bytes_are_in_the_doc():
    doc = Path(__file__).resolve().parent.parent.joinpath("docs", "ota.md").read_text(encoding="utf-8")
    flat = "".join(doc.split()).lower()
    for value in (EXAMPLE_PACKET, EXAMPLE_CLEAR_TAIL, EXAMPLE_POR, EXAMPLE_POR_CLEAR, EXAMPLE_DATA):
        assert value in flat, value
