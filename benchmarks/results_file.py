"""Writing one benchmark's section of ``benchmarks/RESULTS.md`` in place.

Each benchmark owns a block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``;
re-running it replaces that block and leaves the rest of the file (commentary included)
as it is. A file without the block gets a new ``## heading`` section at its end.
"""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of benchmark ``name``'s block."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_block(path: Path, name: str, heading: str, block: str) -> None:
    """Replace ``name``'s marked block of ``path`` by ``block`` (or append a section)."""
    start, end = markers(name)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    marked = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + marked + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + marked + "\n"
    path.write_text(text)
