"""ITK-SNAP label description files: label names and colours in and out.

One line per label: ``IDX R G B A VIS MSH "LABEL"`` (colour 0-255, opacity 0-1, visibility and mesh flags 0/1,
the name in double quotes); ``#`` starts a comment. ITK-SNAP writes them with *Segmentation › Export Label
Descriptions*, 3D Slicer and many atlases ship them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .._files import write_atomic

_LINE = re.compile(
    r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+([01])\s+([01])\s+\"(.*)\"\s*$"
)


class LabelFileError(ValueError):
    """A label description file that cannot be read, with a plain message naming the file and line."""


@dataclass(frozen=True)
class LabelDescription:
    value: int
    rgb: tuple[int, int, int]
    alpha: float = 1.0
    visible: bool = True
    mesh: bool = True
    name: str = ""


def read_label_descriptions(path: str | os.PathLike) -> list[LabelDescription]:
    """Parse an ITK-SNAP label description file (sorted by value)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise LabelFileError(f"cannot read '{path}': {error.strerror or error}") from error
    entries: dict[int, LabelDescription] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise LabelFileError(
                f"'{path.name}' line {number} is not an ITK-SNAP label line (IDX R G B A VIS MSH \"NAME\"): "
                f"{line.strip()[:60]!r}"
            )
        value, red, green, blue = (int(match.group(i)) for i in range(1, 5))
        alpha = float(match.group(5))
        if max(red, green, blue) > 255 or not 0.0 <= alpha <= 1.0:
            raise LabelFileError(f"'{path.name}' line {number}: colours are 0-255 and opacity 0-1")
        entries[value] = LabelDescription(value, (red, green, blue), alpha, match.group(6) == "1",
                                          match.group(7) == "1", match.group(8))
    if not entries:
        raise LabelFileError(f"'{path.name}' holds no label lines; is it an ITK-SNAP label description file?")
    return [entries[value] for value in sorted(entries)]


def write_label_descriptions(path: str | os.PathLike, entries: list[LabelDescription]) -> Path:
    """Write ``entries`` as an ITK-SNAP label description file, atomically."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# written by napari-aunet",
        "################################################",
    ]
    for entry in sorted(entries, key=lambda e: e.value):
        name = entry.name.replace('"', "'")
        red, green, blue = entry.rgb
        lines.append(f"{entry.value:5d} {red:5d} {green:4d} {blue:4d} {entry.alpha:8.2f} {int(entry.visible):2d} "
                     f"{int(entry.mesh):2d}    \"{name}\"")
    return write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
