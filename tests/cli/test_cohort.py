"""Cohorts: `aunet segment DIR -o OUTDIR`, in this process and on a Dask LocalCluster with 2 workers."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from napari_aunet.cli import main
from napari_aunet.engine.phantoms import generate_phantom


@pytest.fixture
def cohort(tmp_path):
    """Four small phantom scans, one of them a broken file, and a text file that is not a scan."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for seed in range(3):
        phantom = generate_phantom((8, 48, 40), seed=seed)
        affine = np.diag([2.0, 1.0, 1.0, 1.0])
        nib.save(nib.Nifti1Image((phantom.image * 100).astype(np.int16), affine), folder / f"case{seed}.nii.gz")
    (folder / "case3.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not a whole gzip stream")
    (folder / "notes.txt").write_text("not a scan")
    return folder


def _summary(outdir):
    with open(outdir / "summary.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _cohort_run(cohort, outdir, capsys, *extra):
    code = main(["segment", str(cohort), "-o", str(outdir), "--model", "phantom", *extra])
    return code, capsys.readouterr()


def test_a_folder_on_a_dask_cluster_goes_on_past_a_broken_scan_and_resumes(cohort, tmp_path, capsys):
    outdir = tmp_path / "out"
    code, captured = _cohort_run(cohort, outdir, capsys, "--dask", "local", "--workers", "2")
    assert code == 1  # one scan failed
    assert sorted(p.name for p in outdir.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    failures = [line for line in captured.err.splitlines() if line.startswith("aunet: failed:")]
    assert len(failures) == 1 and failures[0].startswith("aunet: failed: case3.nii.gz: ")
    rows = _summary(outdir)
    assert [(r["file"], r["status"]) for r in rows] == [
        ("case0.nii.gz", "ok"), ("case1.nii.gz", "ok"), ("case2.nii.gz", "ok"), ("case3.nii.gz", "failed")]
    assert float(rows[0]["organ mL"]) > 0 and rows[3]["organ mL"] == ""
    for seed in range(3):  # each output has its scan's grid
        out, scan = nib.load(outdir / f"case{seed}.nii.gz"), nib.load(cohort / f"case{seed}.nii.gz")
        assert out.shape == scan.shape and np.allclose(out.affine, scan.affine)

    before = {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.nii.gz")}
    code, captured = _cohort_run(cohort, outdir, capsys, "--dask", "local", "--workers", "2")
    assert code == 1
    assert [r["status"] for r in _summary(outdir)] == ["up to date"] * 3 + ["failed"]
    assert {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.nii.gz")} == before  # no work redone
    assert "segmented 0 of 4 scans (3 up to date, 1 failed)" in captured.err


def test_in_process_runs_redo_only_what_changed(cohort, tmp_path, capsys):
    outdir = tmp_path / "out"
    (cohort / "case3.nii.gz").unlink()
    assert _cohort_run(cohort, outdir, capsys)[0] == 0
    first = {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.nii.gz")}

    scan = nib.load(cohort / "case1.nii.gz")  # a new version of one scan
    data = np.asarray(scan.dataobj)
    nib.save(nib.Nifti1Image(data[:, ::-1].copy(), scan.affine), cohort / "case1.nii.gz")
    code, captured = _cohort_run(cohort, outdir, capsys)
    assert code == 0 and [r["status"] for r in _summary(outdir)] == ["up to date", "ok", "up to date"]
    second = {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.nii.gz")}
    assert second["case0.nii.gz"] == first["case0.nii.gz"] and second["case1.nii.gz"] != first["case1.nii.gz"]

    # other settings are other outputs: everything is segmented again
    code, _ = _cohort_run(cohort, outdir, capsys, "--nan", "refuse")
    assert code == 0 and [r["status"] for r in _summary(outdir)] == ["ok"] * 3


def test_globs_and_several_files_are_cohorts_and_bad_requests_are_one_line(cohort, tmp_path, capsys):
    outdir = tmp_path / "out"
    code = main(["segment", str(cohort / "case0.nii.gz"), str(cohort / "case[12].nii.gz"), "-o", str(outdir),
                 "--model", "phantom", "-q"])
    assert code == 0 and [r["file"] for r in _summary(outdir)] == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    capsys.readouterr()
    for argv, message in (
        ([str(cohort), "-o", str(tmp_path / "x.nii.gz")], "several scans go to a folder"),
        ([str(cohort), "-o", str(outdir), "--volumes", str(tmp_path / "v.csv")], "--volumes takes one scan"),
        ([str(tmp_path / "nothing*.nii.gz"), "-o", str(outdir)], "no scan"),
        ([str(cohort), "-o", str(outdir), "--workers", "2"], "--workers needs --dask"),
    ):
        assert main(["segment", *argv, "--model", "phantom"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("aunet: error:") and message in err and "\n" not in err, err
