"""Segmenting a cohort: many scans, one task each, in this process or on a Dask cluster.

``aunet segment DIR_OR_GLOB… -o OUTDIR [--dask local|tcp://HOST:8786] [--workers N]`` calls :func:`run_cohort`.
Every scan is one task (:func:`segment_one`): it never raises — a broken file, a NaN volume or a full disk give a
row with status ``failed`` and the one-line reason, and the other scans go on. Each worker process loads the model
once (:func:`_segmenter`, cached per process). Outputs are written atomically under OUTDIR with the scan's name
(``.nii.gz`` for other formats); a record beside them (``OUTDIR/.aunet-done/<name>.json``: the input's path, size
and modification time, the model's SHA-256 and the options) lets a re-run skip every scan whose output is complete
and up to date, so a killed run resumes where it stopped. ``OUTDIR/summary.csv`` gets one row per scan.

Without ``--dask`` the same tasks run here, one after another. Dask's ``distributed`` is an optional extra
(``pip install 'napari-aunet[dask]'``); a cluster is reached by its scheduler's address, so a laptop and a SLURM
cluster run the same command (docs/scale.md).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ._files import write_atomic

__all__ = ["CohortOptions", "SUMMARY_NAME", "find_scans", "output_name", "run_cohort", "segment_one"]

SUMMARY_NAME = "summary.csv"
DONE_FOLDER = ".aunet-done"
GLOB_CHARACTERS = set("*?[")
_SEGMENTERS: dict = {}  # per process: (model digest, device, precision, batch size) -> Segmenter


@dataclass(frozen=True)
class CohortOptions:
    """How every scan of the cohort is segmented (the options of ``aunet segment``)."""

    model: str = "default"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    mode: str | None = None
    axis: str = "auto"
    views: int | None = None
    nan: str = "background"
    roi_size: int = 96
    overlap: float = 0.25
    threads: int | None = None  # torch threads per task (per worker)
    crop: bool = True  # skip the air around the scanned object

    def settings(self, model_digest: str) -> dict:
        """What decides the output: a scan segmented with other settings is segmented again."""
        kept = {k: v for k, v in asdict(self).items() if k not in ("model", "device", "threads", "batch_size")}
        return {"model_sha256": model_digest, **kept}


def find_scans(inputs: Sequence[str]) -> list[Path]:
    """The scan files named by ``inputs`` (files, folders — their scans, not recursive — or glob patterns), in
    order, each once. An Analyze pair counts by its ``.hdr``. Raises ValueError naming an input that holds none."""
    from .io import READ_SUFFIXES, has_suffix

    def is_scan(path: Path) -> bool:
        return (path.is_file() and not path.name.startswith(".") and has_suffix(path, READ_SUFFIXES)
                and not has_suffix(path, (".img",)))

    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if is_scan(p))
        elif GLOB_CHARACTERS & set(text):
            matches = sorted(Path(p) for p in glob.glob(text) if is_scan(Path(p)))
        elif path.exists():
            matches = [path]
        else:
            raise ValueError(f"'{text}' does not exist")
        if not matches:
            raise ValueError(f"no scan (.nii, .nii.gz, .hdr, .mgz, .nrrd …) in '{text}'")
        found.extend(m for m in matches if m not in found)
    return found


def output_name(scan: Path) -> str:
    """The output's name: the scan's, or its name with ``.nii.gz`` for formats we do not write."""
    from .io import NIFTI_SUFFIXES, has_suffix, scan_name

    return scan.name if has_suffix(scan, NIFTI_SUFFIXES) else f"{scan_name(scan)}.nii.gz"


def model_digest(model: str) -> str:
    """SHA-256 of the model's checkpoint file (a bundled name or a path)."""
    from .engine.bundled import resolve_model_path

    digest = hashlib.sha256()
    with open(resolve_model_path(model), "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _input_stamp(scan: Path) -> dict:
    stat = scan.stat()
    return {"path": os.path.abspath(scan), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _record_path(output: Path) -> Path:
    return output.parent / DONE_FOLDER / f"{output.name}.json"


def up_to_date(scan: Path, output: Path, settings: dict) -> dict | None:
    """The earlier row of ``scan`` when its output exists and was made from this very input with these settings."""
    record = _record_path(output)
    try:
        done = json.loads(record.read_text(encoding="utf-8"))
        if output.is_file() and done["input"] == _input_stamp(scan) and done["settings"] == settings:
            return dict(done["row"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _segmenter(options: CohortOptions, digest: str):
    """This process's Segmenter for ``options`` (the model is loaded once per worker)."""
    key = (digest, options.device, options.precision, options.batch_size)
    if key not in _SEGMENTERS:
        from .engine.bundled import load_model
        from .engine.inference import Segmenter

        _SEGMENTERS[key] = Segmenter(load_model(options.model), device=options.device, precision=options.precision,
                                     batch_size=options.batch_size)
    return _SEGMENTERS[key]


def segment_one(scan: str | os.PathLike, output: str | os.PathLike, options: CohortOptions, settings: dict) -> dict:
    """Segment one scan to ``output`` (atomically) and return its summary row; never raises.

    The row: ``file``, ``status`` (``ok`` / ``failed``), ``seconds``, ``reason`` (failures, warnings), and per
    class ``<name> voxels`` / ``<name> mL``."""
    from .cli import _slicing_axis, _spatial_volume
    from .engine.intensity import domain_warning
    from .io import load_scan, save_labels
    from .io.tables import label_volumes

    scan, output = Path(scan), Path(output)
    started = time.perf_counter()
    row: dict = {"file": scan.name, "status": "ok", "seconds": 0.0, "reason": ""}
    try:
        if options.threads:  # on every call: a Dask worker may run tasks in a new thread, whose OpenMP
            import torch  # thread count comes from OMP_NUM_THREADS=1, which Dask's nanny sets

            torch.set_num_threads(options.threads)
        stamp = _input_stamp(scan)
        segmenter = _segmenter(options, settings["model_sha256"])
        loaded = load_scan(scan)
        volume = _spatial_volume(loaded)
        config = segmenter.config
        mode = options.mode or f"{config.spatial_dims}d"
        axis = _slicing_axis(options.axis, loaded) if mode == "2d" else 0
        notes = [note for note in (domain_warning(volume, config.modality),) if note]
        result = segmenter.segment(volume, mode=mode, axis=axis, roi_size=options.roi_size, overlap=options.overlap,
                                   spacing=loaded.spacing, views=options.views, nan=options.nan, crop=options.crop)
        if result.non_finite:
            notes.append(f"{result.non_finite} NaN or infinite voxel(s) segmented as the scan's minimum")
        save_labels(output, result.labels, reference=loaded)
        for entry in label_volumes(result.labels, loaded.affine, result.class_names):
            row[f"{entry['name']} voxels"] = entry["voxels"]
            row[f"{entry['name']} mL"] = entry["ml"]
        row["reason"] = "; ".join(notes)
        row["seconds"] = round(time.perf_counter() - started, 2)
        record = {"input": stamp, "settings": settings, "row": row}
        _record_path(output).parent.mkdir(exist_ok=True)
        write_atomic(_record_path(output), json.dumps(record, indent=1).encode("utf-8"))
    except Exception as error:  # one scan's failure is a row, never the end of the cohort
        message = " ".join(str(error).split()) or type(error).__name__
        row.update(status="failed", reason=message, seconds=round(time.perf_counter() - started, 2))
    return row


def _client(address: str, workers: int | None):
    """A Dask client: ``local`` starts a LocalCluster of ``workers`` one-thread processes, else the address."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as error:
        raise ValueError("--dask needs Dask's distributed package: pip install 'napari-aunet[dask]'") from error
    if address == "local":
        import logging

        cluster = LocalCluster(n_workers=workers or max(1, os.cpu_count() or 1), threads_per_worker=1,
                               processes=True, dashboard_address=None, silence_logs=logging.ERROR)
        return Client(cluster), cluster
    try:
        return Client(address, timeout="20s"), None
    except OSError as error:
        raise ValueError(f"cannot reach the Dask scheduler at {address}: {error}") from error


def run_cohort(
    scans: Sequence[Path],
    outdir: str | os.PathLike,
    options: CohortOptions,
    *,
    dask: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    failed: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Segment ``scans`` into ``outdir`` and write ``outdir/summary.csv``; rows in the order of ``scans``.

    Scans whose output is up to date are not segmented again (status ``up to date``, their earlier numbers).
    ``progress(done, total)`` after each scan; ``failed(row)`` for each failure, as it happens."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    outputs = [outdir / output_name(scan) for scan in scans]
    clash = {o.name for o in outputs if outputs.count(o) > 1}
    if clash:
        raise ValueError(f"two scans would be written to the same output: {', '.join(sorted(clash))}")
    settings = options.settings(model_digest(options.model))
    rows: dict[int, dict] = {}
    todo = []
    for index, (scan, output) in enumerate(zip(scans, outputs, strict=True)):
        earlier = up_to_date(scan, output, settings)
        if earlier is not None:
            rows[index] = {**earlier, "status": "up to date", "seconds": 0.0}
        else:
            todo.append(index)
    total = len(scans)

    def finish(index: int, row: dict) -> None:
        rows[index] = row
        if row["status"] == "failed" and failed is not None:
            failed(row)
        if progress is not None:
            progress(len(rows), total)

    if progress is not None and rows:
        progress(len(rows), total)
    if dask is None:
        for index in todo:
            finish(index, segment_one(scans[index], outputs[index], options, settings))
    elif todo:
        client, cluster = _client(dask, workers)
        try:
            from dask.distributed import as_completed

            futures = {client.submit(segment_one, str(scans[i]), str(outputs[i]), options, settings,
                                     pure=False, key=f"aunet-segment-{i}-{scans[i].name}"): i for i in todo}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    row = future.result()
                except Exception as error:  # the worker died (killed, out of memory): the scan failed
                    row = {"file": scans[index].name, "status": "failed", "seconds": 0.0,
                           "reason": f"the worker stopped: {' '.join(str(error).split()) or type(error).__name__}"}
                finish(index, row)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    ordered = [rows[i] for i in range(total)]
    write_summary(outdir / SUMMARY_NAME, ordered)
    return ordered


def write_summary(path: Path, rows: list[dict]) -> Path:
    """One CSV row per scan: file, status, seconds, reason, then every class's voxels and mL (blank if absent)."""
    columns = ["file", "status", "seconds", "reason"]
    for row in rows:
        columns += [key for key in row if key not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, text.getvalue().encode("utf-8"))
