"""A process killed with SIGKILL while it saves labels, a checkpoint or a CSV leaves the previous file intact."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# Writes version 1, 2, 3 … of one file, as fast as it can, printing each version once it is complete.
WRITER = r"""
import sys
import numpy as np
from pathlib import Path
kind, target = sys.argv[1], Path(sys.argv[2])
rng = np.random.default_rng(0)
noise = rng.integers(0, 200, (96, 96, 96), dtype=np.uint8)  # incompressible enough to take a while to write
version = 0
while True:
    version += 1
    if kind == "labels":
        from napari_aunet.io import save_labels
        data = noise.copy()
        data[0, 0, 0] = version % 250
        save_labels(target, data, affine=np.eye(4))
    elif kind == "checkpoint":
        import torch
        from napari_aunet.engine.checkpoint import save_checkpoint
        from napari_aunet.engine.config import ModelConfig
        from napari_aunet.engine.model import AttentionUNet
        model = AttentionUNet(ModelConfig(widths=(32, 64, 128, 256)))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float(version))
        save_checkpoint(target, model, history={"version": version})
    else:
        from napari_aunet.io.tables import save_volumes_csv
        save_volumes_csv(target, [{"label": i, "name": f"v{version}", "voxels": version, "ml": float(version)}
                                  for i in range(200_000)])
    print(version, flush=True)
"""


def _version(kind: str, path: Path) -> int:
    """The version a complete file holds (a half-written one fails to load or mixes versions)."""
    if kind == "labels":
        data = np.asarray(nib.load(path).dataobj)
        assert data.shape == (96, 96, 96)
        return int(data[0, 0, 0])
    if kind == "checkpoint":
        from napari_aunet.engine.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        values = {float(t.flatten()[0]) for k, t in checkpoint.state_dict.items() if t.is_floating_point()
                  and "running" not in k}
        assert len(values) == 1 and checkpoint.history["version"] == int(values.pop())
        return checkpoint.history["version"]
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 200_000 and len({row["name"] for row in rows}) == 1
    return int(rows[0]["voxels"])


@pytest.mark.slow
@pytest.mark.parametrize("kind, name", [("labels", "seg.nii.gz"), ("checkpoint", "model.safetensors"),
                                        ("csv", "volumes.csv")])
def test_sigkill_while_saving_leaves_the_previous_file_intact(tmp_path, kind, name):
    target = tmp_path / name
    rng = np.random.default_rng(1)
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target)], stdout=subprocess.PIPE,
                                   text=True, cwd=tmp_path)
        finished = int(process.stdout.readline())  # one version is complete on disk
        time.sleep(float(rng.uniform(0.0, 0.3)))  # then kill it somewhere in the middle of a later one
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert _version(kind, target) >= finished  # loads, whole, one version, not older than the last finished
    # what a kill can leave is a hidden temporary file next to it, never a half-written target
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".tmp-")] == [name]
