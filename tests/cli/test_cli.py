"""The `aunet` command end to end on generated phantoms written as real NIfTI files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_aunet.cli import main
from napari_aunet.engine.checkpoint import save_checkpoint
from napari_aunet.io import load_scan


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    image, labels = folder / "phantom.nii.gz", folder / "truth.nii.gz"
    assert main([
        "phantom", str(image), "--labels", str(labels), "--shape", "40,64,23", "--spacing", "1.5,1,2", "--uint8",
    ]) == 0
    return image, labels


def test_segment_skips_the_air_around_the_scan_unless_told_not_to(phantom_file, tmp_path):
    """A phantom with 12 empty slices on each side: by default the network never runs there (background labels,
    attention 0); --no-crop runs it on the whole field of view."""
    source = nib.load(phantom_file[0])
    data = np.asarray(source.dataobj)
    padded = np.pad(data, [(0, 0), (0, 0), (12, 12)], constant_values=int(data.min()))
    scan = tmp_path / "padded.nii.gz"
    nib.save(nib.Nifti1Image(padded, source.affine), scan)
    maps = {}
    for flag in ([], ["--no-crop"]):
        out, folder = tmp_path / f"seg{len(flag)}.nii.gz", tmp_path / f"maps{len(flag)}"
        assert main(["segment", str(scan), "-o", str(out), "--model", "phantom", "--axis", "2", "--device", "cpu",
                     "--attention-dir", str(folder), "-q", *flag]) == 0
        labels = np.asarray(nib.load(out).dataobj)
        assert labels.shape == padded.shape and labels[..., 12:-12].any()
        assert not labels[..., :12].any() and not labels[..., -12:].any()
        maps[len(flag)] = np.asarray(nib.load(folder / "level1.nii.gz").dataobj)
    assert not maps[0][..., :12].any() and maps[1][..., :12].any()
    assert maps[0].shape == maps[1].shape


def test_phantom_command_writes_aligned_image_and_labels(phantom_file):
    image, labels = (load_scan(p) for p in phantom_file)
    assert image.data.shape == labels.data.shape == (40, 64, 23)
    assert image.data.dtype == np.uint8 and labels.is_label_map
    assert image.spacing == pytest.approx((1.5, 1.0, 2.0))
    np.testing.assert_allclose(image.affine, labels.affine)


def test_segment_writes_labels_and_attention_maps_that_align(phantom_file, tmp_path, capsys):
    image_path, truth_path = phantom_file
    out = tmp_path / "seg.nii.gz"
    maps = tmp_path / "maps"
    code = main(["segment", str(image_path), "-o", str(out), "--model", "phantom", "--attention-dir", str(maps),
                 "--axis", "2", "--device", "cpu"])
    assert code == 0
    source, labels = nib.load(image_path), nib.load(out)
    assert labels.shape == source.shape
    assert np.issubdtype(labels.get_data_dtype(), np.integer)
    np.testing.assert_allclose(labels.affine, source.affine)
    assert int(labels.header["sform_code"]) == int(source.header["sform_code"])
    assert int(labels.header["qform_code"]) == int(source.header["qform_code"])
    assert nib.aff2axcodes(labels.affine) == nib.aff2axcodes(source.affine)

    # The bundled phantom model finds the organ it was trained on.
    truth = np.asarray(nib.load(truth_path).dataobj)
    predicted = np.asarray(labels.dataobj)
    organ = (predicted >= 1), (truth >= 1)
    assert 2 * (organ[0] & organ[1]).sum() / (organ[0].sum() + organ[1].sum()) > 0.9

    written = sorted(p.name for p in maps.iterdir())
    assert written == ["level1.nii.gz", "level2.nii.gz", "level3.nii.gz"]
    for level in (1, 2, 3):
        factor = 2 ** (level - 1)
        attention = nib.load(maps / f"level{level}.nii.gz")
        assert attention.shape == (-(-40 // factor), -(-64 // factor), 23)  # sliced along axis 2
        # Cell (0,0,0) of level k sits at the centre of the first factor x factor input voxels.
        centre = attention.affine @ [0, 0, 0, 1]
        expected = source.affine @ [(factor - 1) / 2, (factor - 1) / 2, 0, 1]
        np.testing.assert_allclose(centre, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(attention.affine[:3, :3], axis=0), [1.5 * factor, factor, 2.0])
        values = np.asarray(attention.dataobj)
        assert values.min() >= 0 and values.max() <= 1
    printed = capsys.readouterr().out.split()
    assert str(out) in printed


def test_segment_writes_label_volumes_in_ml(phantom_file, tmp_path):
    import csv

    out, table = tmp_path / "seg.nii.gz", tmp_path / "volumes.csv"
    assert main(["segment", str(phantom_file[0]), "-o", str(out), "--model", "phantom", "--volumes", str(table),
                 "-q"]) == 0
    rows = list(csv.DictReader(table.open()))
    assert [row["name"] for row in rows] == ["organ", "lesion"]
    labels = load_scan(out).data
    voxel_ml = 1.5 * 1.0 * 2.0 / 1000  # the phantom's spacing, mm³ -> mL
    for row in rows:
        assert int(row["voxels"]) == int((labels == int(row["label"])).sum())
        assert float(row["ml"]) == pytest.approx(int(row["voxels"]) * voxel_ml, abs=1e-4)


def test_segment_writes_a_brain_mask_and_its_volume(phantom_file, tmp_path):
    """--brain-mask: every labelled voxel of the largest connected group, holes filled, aligned, in the CSV."""
    import csv

    out, mask_path, table = tmp_path / "seg.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "volumes.csv"
    assert main(["segment", str(phantom_file[0]), "-o", str(out), "--model", "phantom", "--brain-mask",
                 str(mask_path), "--volumes", str(table), "-q"]) == 0
    labels, mask = load_scan(out), load_scan(mask_path)
    np.testing.assert_allclose(mask.affine, labels.affine)
    assert set(np.unique(mask.data)) == {0, 1}
    assert ((labels.data > 0) <= (mask.data > 0)).mean() > 0.99  # the mask covers (almost) every labelled voxel
    rows = list(csv.DictReader(table.open()))
    assert rows[-1]["name"] == "brain mask" and int(rows[-1]["voxels"]) == int(mask.data.sum())


def test_segment_with_three_views_averages_the_three_slicing_directions(phantom_file, tmp_path, capsys):
    from napari_aunet.engine.bundled import load_model
    from napari_aunet.engine.inference import Segmenter

    image, out = tmp_path / "thick.nii.gz", tmp_path / "seg.nii.gz"
    assert main(["phantom", str(image), "--shape", "40,48,36", "--spacing", "1.5,1,2", "--uint8"]) == 0
    assert main(["segment", str(image), "-o", str(out), "--model", "phantom", "--views", "3"]) == 0
    assert "axis 2, 3 views)" in capsys.readouterr().err
    scan = load_scan(image)
    expected = Segmenter(load_model("phantom")).segment(scan.data, axis=2, views=3, spacing=scan.spacing)
    np.testing.assert_array_equal(load_scan(out).data, expected.labels)


def test_segment_refuses_a_brain_mask_that_is_not_nifti(phantom_file, tmp_path, capsys):
    assert main(["segment", str(phantom_file[0]), "-o", str(tmp_path / "seg.nii.gz"), "--model", "phantom",
                 "--brain-mask", str(tmp_path / "mask.png")]) != 0
    assert "must end with .nii or .nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()


def test_auto_axis_slices_axially_in_a_non_ras_file(tmp_path):
    """A file stored as (S, A, R) rows: auto picks axis 0, the superior-inferior one."""
    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, 1.0, -10], [0, 1.0, 0, -20], [1.0, 0, 0, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(rng.normal(size=(9, 20, 24)).astype(np.float32), affine), tmp_path / "sar.nii.gz")
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(tmp_path / "sar.nii.gz"), "-o", str(out), "--model", "phantom",
                 "--attention-dir", str(tmp_path / "maps"), "-q"]) == 0
    assert nib.load(tmp_path / "maps" / "level2.nii.gz").shape == (9, 10, 12)
    np.testing.assert_allclose(nib.load(out).affine, affine)


def test_info_prints_the_config_as_json(capsys):
    assert main(["info", "phantom"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["class_names"] == ["background", "organ", "lesion"]
    assert summary["config"]["gated_levels"] == [1, 2, 3]
    assert "phantom" in summary["model_card"]
    assert main(["info", "default"]) == 0  # default is the brain model, with its card and data notice
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["class_names"] == ["background", "grey matter", "white matter", "csf"]
    assert summary["config"]["spacing"] == [1.0, 1.0, 1.0]
    assert "MNI ICBM 2009a" in summary["model_card"] and "McGill" in summary["model_card"]
    assert "FSL licence: non-commercial" in summary["model_card"]  # the data notice of every training source


@pytest.mark.parametrize(
    "make_input, args, message",
    [
        (lambda p: p.write_bytes(b"not a scan at all" * 10), [], "cannot read"),
        (lambda p: None, [], "no such file"),
        (lambda p: nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), p), [], "NaN"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), p),
         ["--model", "nonexistent"], "unknown model 'nonexistent'"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), p),
         ["--axis", "7"], "--axis 7 does not exist"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), p),
         ["--mode", "3d"], "2D model"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), p),
         ["--volumes", "/no/such/folder/v.csv"], "folder '/no/such/folder' does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make_input, args, message):
    scan = tmp_path / "in.nii.gz"
    make_input(scan)
    code = main(["segment", str(scan), "-o", str(tmp_path / "out.nii.gz"), "--model", "phantom", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("aunet: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_pickled_checkpoint_is_refused_by_the_cli(tmp_path, capsys, phantom_file):
    evil = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(1)}, evil)
    assert main(["segment", str(phantom_file[0]), "-o", str(tmp_path / "o.nii.gz"), "--model", str(evil)]) == 2
    assert "never unpickles" in capsys.readouterr().err
    assert main(["info", str(evil)]) == 2


def test_a_user_checkpoint_can_be_used_by_path(tmp_path, phantom_file, tiny_model_2d):
    path = save_checkpoint(tmp_path / "mine.safetensors", tiny_model_2d)
    assert main(["segment", str(phantom_file[0]), "-o", str(tmp_path / "o.nii.gz"), "--model", str(path), "-q"]) == 0
    assert nib.load(tmp_path / "o.nii.gz").shape == (40, 64, 23)


def test_console_script_help_is_useful():
    aunet = shutil.which("aunet") or str(__import__("pathlib").Path(sys.executable).parent / "aunet")
    for command in ([], ["segment"], ["info"]):
        result = subprocess.run([aunet, *command, "--help"], capture_output=True, text=True, check=True)
        assert "usage: aunet" in result.stdout
    segment_help = subprocess.run([aunet, "segment", "--help"], capture_output=True, text=True).stdout
    for option in ("--model", "--device", "--mode", "--axis", "--attention-dir"):
        assert option in segment_help


def test_click_writes_the_object_under_the_clicks(tmp_path, capsys):
    from napari_aunet.engine.phantoms import generate_phantom

    phantom = generate_phantom((80, 96, 12), seed=3, lesions=(2, 3))
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    path = tmp_path / "p.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image, affine), path)
    organ = phantom.labels[..., 6] > 0
    i, j = (int(v) for v in np.argwhere(organ).mean(axis=0))
    out = tmp_path / "object.nii.gz"
    assert main(["click", str(path), "--point", f"{i},{j},6", "-o", str(out), "--model", "phantom", "-q"]) == 0
    saved = nib.load(out)
    np.testing.assert_allclose(saved.affine, affine)
    mask = np.asarray(saved.dataobj)
    assert set(np.unique(mask)) == {0, 1}
    assert (mask[..., 6] > 0).sum() > 0.9 * organ.sum() and not mask[..., 5].any()  # axial: axis 2 here

    assert main(["click", str(path), "--point", f"{i},{j},6", "--negative", f"{i},{j},6", "-o", str(out),
                 "--model", "phantom", "-q"]) == 0
    assert not np.asarray(nib.load(out).dataobj).any()

    assert main(["click", str(path), "--point", "1,2", "-o", str(out), "--model", "phantom"]) == 2
    assert "has 2 indices" in capsys.readouterr().err
    assert main(["click", str(path), "--point", "500,2,3", "-o", str(out), "--model", "phantom"]) == 2
    assert "outside the volume" in capsys.readouterr().err



def test_click_box_segments_the_object_inside_it_and_bad_boxes_are_one_line(tmp_path, capsys):
    from scipy import ndimage

    from napari_aunet.engine.phantoms import generate_phantom

    phantom = generate_phantom((80, 96, 12), seed=3, lesions=(2, 3))
    path = tmp_path / "p.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image, np.diag([1.0, 1.0, 2.5, 1.0])), path)
    parts, count = ndimage.label(phantom.labels[..., 6] == 2)
    lesion = parts == 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(parts), parts, range(1, count + 1))))
    rows, cols = np.nonzero(lesion)
    out = tmp_path / "boxed.nii.gz"
    box = f"6:{rows.min() - 2},{cols.min() - 2},{rows.max() + 2},{cols.max() + 2}"
    assert main(["click", str(path), "--box", box, "-o", str(out), "-q"]) == 0  # the click model
    mask = np.asarray(nib.load(out).dataobj) > 0
    assert mask[..., 6].any() and not mask[..., 5].any()
    assert 2 * (mask[..., 6] & lesion).sum() / (mask[..., 6].sum() + lesion.sum()) > 0.5
    capsys.readouterr()
    for bad, message in (("1,2,3,4", "Z:R0,C0,R1,C1"), ("6:a,b,c,d", "whole numbers"),
                         ("6:300,300,310,310", "does not cover")):
        assert main(["click", str(path), "--box", bad, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert main(["click", str(path), "-o", str(out)]) == 2
    assert "give a box (--box) or at least one click" in capsys.readouterr().err

def test_demo_without_a_qt_binding_is_one_line(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "qtpy", None)  # `import qtpy` now fails, as with no binding installed
    assert main(["demo"]) != 0
    error = capsys.readouterr().err.strip()
    assert "needs a Qt binding: pip install PyQt5" in error and "\n" not in error


def test_segment_says_how_many_nan_voxels_it_treated_as_background(tmp_path, capsys):
    data = np.random.default_rng(0).normal(100, 20, (24, 24, 6)).astype(np.float32)
    data[:4, :4, :] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "holes.nii.gz")
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(tmp_path / "holes.nii.gz"), "-o", str(out), "--model", "phantom"]) == 0
    assert "96 NaN or infinite voxel(s)" in capsys.readouterr().err and out.exists()
    assert main(["segment", str(tmp_path / "holes.nii.gz"), "-o", str(tmp_path / "no.nii.gz"), "--model", "phantom",
                 "--nan", "refuse"]) != 0
    assert "96 NaN or infinite voxel(s)" in capsys.readouterr().err and not (tmp_path / "no.nii.gz").exists()


def test_a_ct_given_to_the_mri_brain_model_gets_one_warning_line_and_is_still_segmented(tmp_path, capsys):
    ct = np.full((40, 40, 34), -1000, np.int16)  # air
    ct[8:32, 8:32, :] = 40  # soft tissue in HU
    ct[10:30, 10:12, :] = 900  # bone
    nib.save(nib.Nifti1Image(ct, np.eye(4)), tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(out), "--views", "1", "-q"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1 and "looks like a CT in Hounsfield units" in lines[0] and "trained on MRI" in lines[0]
    assert out.exists()  # nothing is refused
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(out), "--model", "phantom", "-q"]) == 0
    assert "warning" not in capsys.readouterr().err  # the phantom model knows no modality: no warning


def test_attention_report_ranks_the_gates(phantom_file, tmp_path, capsys):
    image, truth = phantom_file
    assert main(["attention-report", str(image), "--model", "phantom", "--labels", str(truth),
                 "--slices", "2:4,8,12"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"] == "labels" and report["slices"] == [4, 8, 12] and report["axis"] == 2
    levels = report["levels"]
    assert sorted(r["level"] for r in levels) == [1, 2, 3]
    assert [r["change_closed"] for r in levels] == sorted(r["change_closed"] for r in levels)
    assert {"organ", "outside"} <= set(levels[0]["mean_psi"])
    out = tmp_path / "report.json"
    assert main(["attention-report", str(image), "--model", "phantom", "-o", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["reference"] == "model"
    assert main(["attention-report", str(image), "--model", "click"]) == 2
    assert "click model" in capsys.readouterr().err
