"""The installed package carries its napari manifest and resources, and every manifest command imports."""

from __future__ import annotations

import ast
import importlib.resources
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_installed_manifest_is_found_and_its_commands_import():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-aunet")
    assert manifest.name == "napari-aunet"
    commands = manifest.contributions.commands
    assert commands
    manifest.validate_imports()  # raises if any python_name does not import
    for command in commands:
        module, _, attribute = command.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attribute]), attribute))


def test_resources_are_inside_the_installed_package():
    package = importlib.resources.files("napari_aunet")
    assert (package / "napari.yaml").is_file()
    assert (package / "resources" / "models" / "phantom.safetensors").is_file()
    assert (package / "resources" / "samples" / "MNI152_NOTICE.txt").is_file()


def test_engine_and_io_never_import_qt_or_napari():
    forbidden = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy"}
    for folder in ("engine", "io"):
        for path in (ROOT / "napari_aunet" / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                assert not {name.split(".")[0] for name in names} & forbidden, f"{path.name} imports {names}"
    # And at run time: importing the engine and the CLI pulls in no Qt.
    code = (
        "import sys, napari_aunet.engine.inference, napari_aunet.cli, napari_aunet.io;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy','PyQt5','napari','vispy')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_wheel_holds_real_files_for_the_manifest_and_resources(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True,
    )
    (wheel,) = tmp_path.glob("napari_aunet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "napari_aunet/napari.yaml" in names
        assert "napari_aunet/resources/models/phantom.safetensors" in names
        manifest = archive.read("napari_aunet/napari.yaml").decode()
        assert "name: napari-aunet" in manifest  # the file itself, not a symlink
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari-aunet = napari_aunet:napari.yaml" in archive.read(entry_points).decode()
