"""`aunet train` and `aunet evaluate` on generated phantoms with partial labels."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_aunet.cli import main
from napari_aunet.engine.checkpoint import load_checkpoint
from napari_aunet.engine.phantoms import generate_phantom


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An inverted-contrast phantom (the phantom model does poorly) with labels on 4 axial slices only."""
    folder = tmp_path_factory.mktemp("train")
    phantom = generate_phantom((64, 64, 24), seed=5, lesions=(3, 5))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image = folder / "inverted.nii.gz"
    nib.save(nib.Nifti1Image((-phantom.image).astype(np.float32), affine), image)
    partial = np.zeros_like(phantom.labels)
    partial[..., [7, 10, 13, 16]] = phantom.labels[..., [7, 10, 13, 16]]
    labels, truth = folder / "partial.nii.gz", folder / "truth.nii.gz"
    nib.save(nib.Nifti1Image(partial, affine), labels)
    nib.save(nib.Nifti1Image(phantom.labels, affine), truth)
    return folder, image, labels, truth


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_train_then_evaluate_improves_the_untouched_slices(files, capsys):
    folder, image, labels, truth = files
    untouched = ",".join(str(s) for s in range(24) if s not in (7, 10, 13, 16))
    assert main(["evaluate", "--model", "phantom", "--image", str(image), "--labels", str(truth),
                 "--slices", f"2:{untouched}"]) == 0
    before = _json(capsys)
    assert set(before) >= {"dice", "iou", "mean_dice"}

    model = folder / "tuned.safetensors"
    assert main(["train", "--image", str(image), "--labels", str(labels), "-o", str(model), "--init", "phantom",
                 "--steps", "60", "--seed", "0", "-q"]) == 0
    report = _json(capsys)
    assert report["steps"] == 60 and "organ" in report["after"]["dice"]

    assert main(["evaluate", "--model", str(model), "--image", str(image), "--labels", str(truth),
                 "--slices", f"2:{untouched}"]) == 0
    after = _json(capsys)
    assert after["dice"]["organ"] > before["dice"]["organ"] + 0.2

    checkpoint = load_checkpoint(model)
    assert checkpoint.provenance["annotated_slices"] == {"inverted.nii.gz": [7, 10, 13, 16]}
    assert checkpoint.provenance["axes"] == [2] and checkpoint.provenance["seed"] == 0
    assert len(checkpoint.history["loss"]) == 60


def test_evaluate_defaults_to_the_annotated_slices(files, capsys):
    _, image, labels, _ = files
    assert main(["evaluate", "--model", "phantom", "--image", str(image), "--labels", str(labels)]) == 0
    scores = _json(capsys)
    assert scores["slices"] == [7, 10, 13, 16] and scores["axis"] == 2


def test_train_a_plain_unet_from_scratch(files, capsys):
    folder, image, labels, _ = files
    out = folder / "unet.safetensors"
    assert main(["train", "--image", str(image), "--labels", str(labels), "-o", str(out), "--init", "none",
                 "--arch", "unet", "--dims", "2", "--steps", "3", "-q"]) == 0
    config = load_checkpoint(out).config
    assert config.gated_levels == () and config.out_channels == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--slices", "2:oops"], "AXIS:LIST"),
        (["--slices", "2:99"], "do not exist"),
    ],
)
def test_evaluate_bad_input_is_one_line(files, capsys, extra, message):
    _, image, labels, _ = files
    assert main(["evaluate", "--model", "phantom", "--image", str(image), "--labels", str(labels), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_train_refuses_mismatched_files(files, tmp_path, capsys):
    _, image, _, _ = files
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), small)
    assert main(["train", "--image", str(image), "--labels", str(small), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "has shape (8, 8, 8)" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_train_from_brain_on_other_classes_keeps_their_names(files, capsys, tmp_path):
    """Labels with classes the brain model lacks: a new head, the names from an ITK-SNAP file, one line said."""
    folder, image, labels, _ = files
    painted = np.asarray(nib.load(labels).dataobj).astype(np.uint8)
    painted[20:24, 20:24][painted[20:24, 20:24] == 1] = 3  # a third structure the brain model has no class for
    many = tmp_path / "three_structures.nii.gz"
    nib.save(nib.Nifti1Image(painted, nib.load(labels).affine), many)
    names = tmp_path / "names.txt"
    names.write_text('0 0 0 0 0 0 0 "Clear Label"\n1 255 0 0 1 1 1 "liver"\n2 0 255 0 1 1 1 "lesion"\n'
                     '3 0 0 255 1 1 1 "vessel"\n')
    model = tmp_path / "structures.safetensors"
    assert main(["train", "--image", str(image), "--labels", str(many), "-o", str(model), "--init", "brain",
                 "--label-names", str(names), "--steps", "3", "-q"]) == 0
    captured = capsys.readouterr()
    assert "new output head" in captured.err and "grey matter" in captured.err
    assert "liver" in json.loads(captured.out)["after"]["dice"]
    checkpoint = load_checkpoint(model)
    assert checkpoint.config.class_names == ("background", "liver", "lesion", "vessel")
    assert checkpoint.build_model().head.out_channels == 4
    assert main(["info", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["class_names"][1:] == ["liver", "lesion", "vessel"]


def test_train_refuses_a_damaged_label_names_file(files, tmp_path, capsys):
    folder, image, labels, _ = files
    junk = tmp_path / "junk.txt"
    junk.write_text("this is not a label file\n")
    assert main(["train", "--image", str(image), "--labels", str(labels), "-o", str(tmp_path / "m.safetensors"),
                 "--init", "brain", "--label-names", str(junk), "--steps", "1", "-q"]) != 0
    assert "junk.txt" in capsys.readouterr().err and not (tmp_path / "m.safetensors").exists()


def test_torchrun_two_gloo_ranks_end_identical_with_one_checkpoint(files, tmp_path):
    """`aunet train --distributed` under torchrun: DistributedDataParallel on two CPU processes (Gloo), pairs from a
    CSV manifest; from scratch, so BatchNorm statistics move on every rank: the ranks still end with the same weights
    and buffers, and rank 0 alone writes the checkpoint, the report and the TensorBoard records (where installed)."""
    import importlib.util
    import subprocess
    import sys

    folder, image, labels, _ = files
    records = tmp_path / "records"
    logging = ["--log-dir", str(records)] if importlib.util.find_spec("tensorboard") else []
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"image,labels\n{image},{labels}\n{image},{labels}\n")
    out = tmp_path / "ranks" / "model.safetensors"
    out.parent.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "napari_aunet.cli", "train", "--manifest", str(manifest), "-o", str(out), "--init", "none",
               "--steps", "8", "--distributed", "-q", *logging]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # one report: rank 0's
    assert report["ranks"] == 2 and report["weights_identical"] is True and report["steps"] == 8
    assert [p.name for p in out.parent.iterdir()] == ["model.safetensors"]
    checkpoint = load_checkpoint(out)
    assert checkpoint.provenance["ranks"] == 2 and checkpoint.history["ranks"] == 2
    if logging:
        _event_file(records)  # one event file: rank 0's


def test_pairs_from_folders_and_distributed_without_torchrun(files, tmp_path, capsys):
    folder, image, labels, _ = files
    images, masks = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), masks.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (images / name).write_bytes(image.read_bytes())
        (masks / name).write_bytes(labels.read_bytes())
    out = tmp_path / "folders.safetensors"
    assert main(["train", "--image", str(images), "--labels", str(masks), "-o", str(out), "--init", "phantom",
                 "--steps", "2", "-q"]) == 0
    assert load_checkpoint(out).provenance["images"] == [str(images / "a.nii.gz"), str(images / "b.nii.gz")]
    capsys.readouterr()
    (masks / "b.nii.gz").unlink()
    assert main(["train", "--image", str(images), "--labels", str(masks), "-o", str(out), "--steps", "2"]) == 2
    assert "no labels for 'b.nii.gz'" in capsys.readouterr().err
    assert main(["train", "--image", str(image), "--labels", str(labels), "-o", str(out), "--steps", "2",
                 "--distributed"]) == 2
    assert "--distributed runs under torchrun" in capsys.readouterr().err


def _event_file(folder):
    found = sorted(folder.glob("events.out.tfevents.*"))
    assert len(found) == 1, found
    return found[0]


def test_train_log_dir_writes_tensorboard_records(files, tmp_path, capsys):
    """--log-dir: the training scalars every --log-every steps and at the last one, the held-out scores at each
    check, before/after, and each gated level's attention on one fixed slice, readable by TensorBoard itself."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    _, image, labels, _ = files
    records = tmp_path / "records"
    assert main(["train", "--image", str(image), "--labels", str(labels), "-o", str(tmp_path / "m.safetensors"),
                 "--init", "phantom", "--steps", "5", "--log-dir", str(records), "--log-every", "2", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    history = load_checkpoint(tmp_path / "m.safetensors").history
    events = event_accumulator.EventAccumulator(
        str(_event_file(records)), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0,
                                                  event_accumulator.TENSORS: 0})
    events.Reload()
    scalars = events.Tags()["scalars"]

    def steps(tag):
        return [event.step for event in events.Scalars(tag)]

    for tag in ("train/loss", "train/dice", "train/lr"):
        assert steps(tag) == [2, 4, 5], tag  # every 2 steps, and the last one
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [history["loss"][1], history["loss"][3], history["loss"][4]], abs=1e-4)  # the history's running loss
    assert events.Scalars("train/lr")[0].value > 0
    checks = [step for step, _, _ in history["validation"]]
    assert len(checks) == 5  # 4 annotated slices, 1 held out: a check after each of the 5 steps
    assert steps("heldout/mean_dice") == checks
    assert steps("heldout/dice/organ") == checks and steps("heldout/iou/organ") == checks
    assert [e.value for e in events.Scalars("heldout/mean_dice")] == pytest.approx(
        [score for _, _, score in history["validation"]], abs=1e-4)
    assert steps("evaluation/dice/organ") == [0, 5]
    assert events.Scalars("evaluation/dice/organ")[-1].value == pytest.approx(report["after"]["dice"]["organ"])
    assert "evaluation/mean_dice" in scalars

    gated = load_checkpoint(tmp_path / "m.safetensors").config.gated_levels
    images = events.Tags()["images"]
    assert sorted(t for t in images if t.startswith("attention/")) == [f"attention/L{k}" for k in gated]
    for level in gated:
        shown = events.Images(f"attention/L{level}")
        assert [e.step for e in shown] == [0, *checks]  # before training and at each check
        assert (shown[0].height, shown[0].width) == (64, 64)  # every level at the slice's size
    for tag in ("slice/scan", "slice/labels"):
        assert [e.step for e in events.Images(tag)] == [0]
    text = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]
            if tag.startswith("run/")}
    assert "held out" in text["run/slice/text_summary"] and "axis 2" in text["run/slice/text_summary"]


def test_train_log_dir_without_tensorboard_is_one_line(files, tmp_path, capsys, monkeypatch):
    """No TensorBoard: --log-dir stops at once with one line, nothing trained, nothing written."""
    import sys

    import napari_aunet.engine.finetune as finetune

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(finetune, "fine_tune", no_training)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    _, image, labels, _ = files
    out, records = tmp_path / "m.safetensors", tmp_path / "records"
    assert main(["train", "--image", str(image), "--labels", str(labels), "-o", str(out), "--init", "phantom",
                 "--steps", "2", "--log-dir", str(records)]) == 2
    err = capsys.readouterr().err
    assert err == "aunet: error: --log-dir needs TensorBoard: pip install 'napari-aunet[tensorboard]'\n"
    assert not out.exists() and not records.exists()
    assert main(["train", "--image", str(image), "--labels", str(labels), "-o", str(out), "--log-every", "5"]) == 2
    assert "--log-every needs --log-dir" in capsys.readouterr().err
