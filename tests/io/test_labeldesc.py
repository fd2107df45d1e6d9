"""ITK-SNAP label description files: read what ITK-SNAP writes, write what it reads, refuse junk plainly."""

from __future__ import annotations

import pytest

from napari_aunet.io.labeldesc import (
    LabelDescription,
    LabelFileError,
    read_label_descriptions,
    write_label_descriptions,
)

ITK_SNAP_FILE = '''################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
################################################
    0     0    0    0        0  0  0    "Clear Label"
    1   255    0    0        1  1  1    "Grey matter"
   12     0  255    0      0.5  1  0    "White matter (left)"
  300    10   20   30        1  0  1    "Lesion \\"A\\""
'''


def test_reads_an_itk_snap_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text(ITK_SNAP_FILE)
    entries = read_label_descriptions(path)
    assert [e.value for e in entries] == [0, 1, 12, 300]
    assert entries[1] == LabelDescription(1, (255, 0, 0), 1.0, True, True, "Grey matter")
    assert entries[2].alpha == 0.5 and entries[2].visible and not entries[2].mesh
    assert entries[2].name == "White matter (left)"
    assert not entries[3].visible


def test_round_trip(tmp_path):
    entries = [LabelDescription(0, (0, 0, 0), 0.0, False, False, "Clear Label"),
               LabelDescription(2, (60, 180, 75), 1.0, True, True, "white matter"),
               LabelDescription(7, (1, 2, 3), 0.25, True, False, 'say "hi"')]
    path = write_label_descriptions(tmp_path / "out.txt", entries)
    again = read_label_descriptions(path)
    assert again[:2] == entries[:2]
    assert again[2].name == "say 'hi'" and again[2].alpha == 0.25  # double quotes become single ones
    assert not list(tmp_path.glob(".tmp-*"))  # atomic: no temporary file left


@pytest.mark.parametrize("text, message", [
    ("1 255 0 0 1 1 1 Grey matter\n", "line 1 is not an ITK-SNAP label line"),
    ("# only comments\n\n", "holds no label lines"),
    ("1 999 0 0 1 1 1 \"x\"\n", "colours are 0-255"),
    ("\x00\x01binary junk\x02", "is not an ITK-SNAP label line"),
])
def test_bad_files_are_refused_in_plain_words(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(LabelFileError, match=message):
        read_label_descriptions(path)
    with pytest.raises(LabelFileError, match="cannot read"):
        read_label_descriptions(tmp_path / "missing.txt")
