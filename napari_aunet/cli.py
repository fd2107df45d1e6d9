"""The ``aunet`` command: the engine and the file IO without any GUI.

Every error caused by the input (a broken file, a bad checkpoint, a NaN volume, a wrong option) is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

EXIT_BAD_INPUT = 2


class CommandError(ValueError):
    """A problem with the command's arguments, reported as one line."""


def _progress_printer(label: str, quiet: bool):
    if quiet:
        return None
    interactive = sys.stderr.isatty()

    def report(done: int, total: int, *rest) -> None:
        if interactive:
            end = "\n" if done == total else ""
            print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)
        elif done == total:
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _slicing_axis(axis: str, scan) -> int:
    """``auto`` slices axially: the array axis closest to the scanner's superior-inferior direction."""
    if axis != "auto":
        try:
            value = int(axis)
        except ValueError as error:
            raise CommandError(f"--axis must be auto or an axis number, got {axis!r}") from error
        if not 0 <= value < scan.data.ndim:
            raise CommandError(f"--axis {value} does not exist in a scan of shape {scan.data.shape}")
        return value
    if scan.data.ndim == 2:
        return 0
    codes = scan.orientation
    return next((index for index, code in enumerate(codes[:3]) if code in ("S", "I")), 0)


def _spatial_volume(scan):
    data = scan.data
    if data.ndim > scan.spatial_ndim:
        extra = data.shape[scan.spatial_ndim :]
        if int(np.prod(extra)) != 1:
            raise CommandError(
                f"'{scan.path}' has shape {data.shape}: a {len(extra)}-axis series; segment one volume at a time"
            )
        data = data.reshape(data.shape[: scan.spatial_ndim])
    return data


def _is_cohort(args: argparse.Namespace) -> bool:
    """Several inputs, a folder, a glob, or an output folder: one task per scan (napari_aunet.cohort)."""
    from .cohort import GLOB_CHARACTERS

    inputs = args.input
    return (len(inputs) > 1 or any(Path(p).is_dir() or GLOB_CHARACTERS & set(p) for p in inputs)
            or Path(args.output).is_dir() or args.output.endswith(os.sep) or args.dask is not None)


def cmd_segment_cohort(args: argparse.Namespace) -> int:
    from .cohort import SUMMARY_NAME, CohortOptions, find_scans, run_cohort

    for flag, value in (("--volumes", args.volumes), ("--brain-mask", args.brain_mask),
                        ("--attention-dir", args.attention_dir)):
        if value is not None:
            raise CommandError(f"{flag} takes one scan; for a cohort, {SUMMARY_NAME} in OUTDIR holds every volume")
    if any(args.output.endswith(s) for s in (".nii", ".nii.gz")):
        raise CommandError(f"several scans go to a folder, not to the file '{args.output}'")
    if args.workers is not None and (args.dask is None or args.workers < 1):
        raise CommandError("--workers needs --dask (and at least 1)")
    scans = find_scans(args.input)
    workers = args.workers or (os.cpu_count() or 1 if args.dask == "local" else None)
    threads = max(1, (os.cpu_count() or 1) // workers) if args.dask == "local" else None
    options = CohortOptions(model=args.model, device=args.device, precision=args.precision,
                            batch_size=args.batch_size, mode=args.mode, axis=args.axis, views=args.views,
                            nan=args.nan, roi_size=args.roi_size, overlap=args.overlap, threads=threads,
                            crop=args.crop)
    report = _progress_printer("segment", args.quiet)
    started = time.perf_counter()
    rows = run_cohort(scans, args.output, options, dask=args.dask, workers=workers, progress=report,
                      failed=lambda row: print(f"aunet: failed: {row['file']}: {row['reason']}", file=sys.stderr))
    counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "up to date", "failed")}
    summary = Path(args.output) / SUMMARY_NAME
    if not args.quiet:
        print(f"segmented {counts['ok']} of {len(rows)} scans ({counts['up to date']} up to date, "
              f"{counts['failed']} failed) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        print(summary)
    return 1 if counts["failed"] else 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .engine.bundled import load_model
    from .engine.inference import Segmenter
    from .io import load_scan, save_attention_maps, save_labels

    if _is_cohort(args):
        return cmd_segment_cohort(args)
    args.input = args.input[0]
    output = Path(args.output)
    if not any(str(output).endswith(s) for s in (".nii", ".nii.gz")):
        raise CommandError(f"output '{output}' must end with .nii or .nii.gz")
    volumes, mask_path = args.volumes, args.brain_mask
    for extra in (volumes, mask_path):
        if extra is not None and not Path(extra).parent.is_dir():
            raise CommandError(f"cannot write '{extra}': folder '{Path(extra).parent}' does not exist")
    if mask_path is not None and not any(str(mask_path).endswith(s) for s in (".nii", ".nii.gz")):
        raise CommandError(f"brain mask '{mask_path}' must end with .nii or .nii.gz")
    scan = load_scan(args.input)
    volume = _spatial_volume(scan)
    checkpoint = load_model(args.model)
    segmenter = Segmenter(checkpoint, device=args.device, precision=args.precision, batch_size=args.batch_size)
    mode = args.mode or f"{checkpoint.config.spatial_dims}d"
    axis = _slicing_axis(args.axis, scan) if mode == "2d" else None
    from .engine.intensity import domain_warning

    warning = domain_warning(volume, checkpoint.config.modality)
    if warning:
        print(f"aunet: warning: '{args.input}': {warning}", file=sys.stderr)
    started = time.perf_counter()
    result = segmenter.segment(
        volume,
        mode=mode,
        axis=axis or 0,
        roi_size=args.roi_size,
        overlap=args.overlap,
        return_attention=args.attention_dir is not None,
        spacing=scan.spacing,
        views=args.views,
        nan=args.nan,
        crop=args.crop,
        progress=_progress_printer("segment", args.quiet),
    )
    if result.non_finite:
        print(f"aunet: warning: {result.non_finite} NaN or infinite voxel(s) in '{args.input}' were segmented as the "
              "scan's minimum (--nan refuse stops instead)", file=sys.stderr)
    elapsed = time.perf_counter() - started
    save_labels(output, result.labels, reference=scan)
    written = [str(output)]
    mask = None
    if mask_path is not None:
        from .engine.postprocess import brain_mask

        mask = brain_mask(result.labels)
        save_labels(mask_path, mask, reference=scan)
        written.append(str(mask_path))
    if args.attention_dir is not None:
        folder = Path(args.attention_dir)
        folder.mkdir(parents=True, exist_ok=True)
        maps = {level: (m.data, m.geometry.affine(scan.affine)) for level, m in result.attention.items()}
        written += [str(p) for p in save_attention_maps(folder, maps, header=scan.header, file_format=scan.format)]
    if volumes is not None:
        from .io.tables import label_volumes, save_volumes_csv

        rows = label_volumes(result.labels, scan.affine, result.class_names)
        if mask is not None:
            rows += [{**row, "label": "mask", "name": "brain mask"} for row in label_volumes(mask, scan.affine)]
        written.append(str(save_volumes_csv(volumes, rows)))
    if not args.quiet:
        counts = {
            name: int((result.labels == index).sum())
            for index, name in enumerate(result.class_names)
            if index > 0
        }
        print(
            f"segmented {scan.data.shape} on {segmenter.device.type} ({mode}"
            f"{f', axis {axis}' if axis is not None else ''}{', 3 views' if result.views == 3 else ''})"
            f" in {elapsed:.1f} s; voxels per class: {counts}"
            + (f"; resampled to {result.resampled_shape} for the model's {checkpoint.config.spacing} mm voxels"
               if result.resampled_shape else ""),
            file=sys.stderr,
        )
        for path in written:
            print(path)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .engine.bundled import load_model

    checkpoint = load_model(args.model)
    summary = checkpoint.describe()
    summary["name"] = args.model
    print(json.dumps(summary, indent=2))
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    import numpy as np

    from .engine.phantoms import generate_phantom
    from .io import save_image, save_labels

    try:
        shape = tuple(int(n) for n in args.shape.split(","))
        spacing = tuple(float(s) for s in args.spacing.split(","))
    except ValueError as error:
        raise CommandError(f"--shape and --spacing take comma-separated numbers ({error})") from error
    if len(spacing) == 1:
        spacing = spacing * len(shape)
    if len(spacing) != len(shape):
        raise CommandError(f"--spacing has {len(spacing)} values for a {len(shape)}D --shape")
    phantom = generate_phantom(shape, seed=args.seed)
    affine = np.diag([*spacing, *([1.0] * (4 - len(spacing)))])
    image = np.clip(phantom.image * 100, 0, 255).astype(np.uint8) if args.uint8 else phantom.image
    save_image(args.output, image, affine=affine)
    print(args.output)
    if args.labels:
        save_labels(args.labels, phantom.labels, affine=affine)
        print(args.labels)
    return 0


def cmd_build_model(args: argparse.Namespace) -> int:
    from .engine.bundled import resources_dir
    from .recipes import build_bundled_model

    output = Path(args.output) if args.output else resources_dir() / "models" / f"{args.name}.safetensors"
    started = time.perf_counter()
    try:
        build_bundled_model(args.name, output, steps=args.steps, seed=args.seed, data=args.data,
                            progress=_progress_printer("train", args.quiet))
    except FileNotFoundError as error:
        print(f"aunet build-model: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


def _parse_slices(text: str | None) -> tuple[int | None, list[int] | None]:
    """``AXIS:LIST`` (e.g. ``2:10,20,30`` or ``2:10-14``) -> (axis, slices)."""
    if not text:
        return None, None
    try:
        axis_text, _, items = text.partition(":")
        axis = int(axis_text)
        slices: list[int] = []
        for item in items.split(","):
            if "-" in item:
                first, last = (int(v) for v in item.split("-"))
                slices.extend(range(first, last + 1))
            elif item.strip():
                slices.append(int(item))
    except ValueError as error:
        raise CommandError(f"--slices takes AXIS:LIST, e.g. 2:10,20,30-35; got {text!r}") from error
    if not slices:
        raise CommandError(f"--slices {text!r} names no slice")
    return axis, slices


def _pairs_from_files(images: list[str], labels: list[str], axis: str):
    from .engine.finetune import TrainingPair
    from .io import load_scan

    if len(images) != len(labels):
        raise CommandError(f"{len(images)} --image but {len(labels)} --labels: give one labels file per image")
    pairs, scans = [], []
    for image_path, labels_path in zip(images, labels, strict=True):
        scan, label_scan = load_scan(image_path), load_scan(labels_path)
        volume, label_volume = _spatial_volume(scan), _spatial_volume(label_scan)
        if volume.shape != label_volume.shape:
            raise CommandError(
                f"'{labels_path}' has shape {label_volume.shape}, but '{image_path}' has {volume.shape}"
            )
        if not np.allclose(scan.affine, label_scan.affine, atol=1e-3):
            print(f"aunet: warning: '{labels_path}' and '{image_path}' have different affines", file=sys.stderr)
        label_volume = np.asarray(label_volume)
        if label_volume.dtype.kind == "f":
            label_volume = np.rint(label_volume)
        if label_volume.min() < 0:
            raise CommandError(f"'{labels_path}' holds negative labels")
        slicing = _slicing_axis(axis, scan) if volume.ndim == 3 else 0
        pairs.append(TrainingPair(np.asarray(volume), label_volume.astype(np.int64), axis=slicing,
                                  name=Path(image_path).name, spacing=scan.spacing[: volume.ndim]))
        scans.append(scan)
    return pairs, scans


def _training_files(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(images, labels) from --manifest (a CSV with image,labels columns; paths relative to it) or from --image /
    --labels, each a file or a folder (files matched by name)."""
    from .cohort import find_scans

    if args.manifest:
        import csv

        if args.image or args.labels:
            raise CommandError("give --manifest or --image/--labels, not both")
        base = Path(args.manifest).parent
        try:
            with open(args.manifest, newline="", encoding="utf-8") as stream:
                rows = list(csv.DictReader(stream))
        except OSError as error:
            raise CommandError(f"cannot read the manifest '{args.manifest}': {error.strerror or error}") from error
        if not rows or not {"image", "labels"} <= set(rows[0]):
            raise CommandError(f"the manifest '{args.manifest}' needs a header with image and labels columns")
        return ([str(base / row["image"]) for row in rows], [str(base / row["labels"]) for row in rows])
    if not args.image or not args.labels:
        raise CommandError("give --image and --labels (files or folders), or --manifest CSV")
    if len(args.image) != len(args.labels):
        raise CommandError(f"{len(args.image)} --image but {len(args.labels)} --labels: give one labels file per image")
    images, labels = [], []
    for image, label in zip(args.image, args.labels, strict=True):
        if Path(image).is_dir() != Path(label).is_dir():
            raise CommandError(f"'{image}' and '{label}': give two files or two folders")
        if not Path(image).is_dir():
            images.append(image)
            labels.append(label)
            continue
        found = {p.name: p for p in find_scans([label])}
        for scan in find_scans([image]):
            if scan.name not in found:
                raise CommandError(f"no labels for '{scan.name}' in '{label}' (labels are matched by file name)")
            images.append(str(scan))
            labels.append(str(found[scan.name]))
    return images, labels


def _start_ranks(device) -> tuple[int, int, object]:
    """Join the torchrun process group (Gloo on CPUs, NCCL on GPUs): (rank, world size, this rank's device)."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise CommandError("--distributed runs under torchrun, e.g. torchrun --nproc-per-node 2 "
                           "$(which aunet) train … --distributed")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _weights_digest(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _label_names(path: str | None) -> dict[int, str]:
    """Label value -> name from an ITK-SNAP label description file (``--label-names``)."""
    if not path:
        return {}
    from .io.labeldesc import LabelFileError, read_label_descriptions

    try:
        return {entry.value: entry.name for entry in read_label_descriptions(path) if entry.value != 0}
    except LabelFileError as error:
        raise CommandError(str(error)) from error


def cmd_train(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if not str(output).endswith(".safetensors"):
        raise CommandError(f"output '{output}' must end with .safetensors")
    if args.steps is None and args.time_budget is None:
        args.steps = 200
    _check_records(args)  # before any rank starts or anything is read
    images, labels = _training_files(args)
    device, rank, world = _device(args.device), 0, 1
    if args.distributed:
        rank, world, device = _start_ranks(device)
    if not args.distributed:
        return _train(args, output, images, labels, device, rank, world)
    import torch.distributed as dist

    try:
        code = _train(args, output, images, labels, device, rank, world)
        dist.barrier()  # the other ranks wait for rank 0's checkpoint: one leaving early aborted in Gloo's threads
        return code
    finally:
        dist.destroy_process_group()


def _check_records(args: argparse.Namespace) -> None:
    """``--log-dir``/``--log-every`` usable: TensorBoard installed, a step count of at least 1."""
    if args.log_dir is None:
        if args.log_every is not None:
            raise CommandError("--log-every needs --log-dir")
        return
    if args.log_every is not None and args.log_every < 1:
        raise CommandError(f"--log-every takes a number of steps of at least 1, got {args.log_every}")
    from .engine.records import INSTALL_HINT, RecordsUnavailable, require_tensorboard

    try:
        require_tensorboard()
    except RecordsUnavailable as error:
        raise CommandError(f"--log-dir needs TensorBoard: {INSTALL_HINT}") from error


def _open_records(args: argparse.Namespace, rank: int):
    """The run's TensorBoard records (rank 0 only), or None without --log-dir."""
    if args.log_dir is None or rank > 0:
        return None
    from .engine.records import TensorBoardRecords

    try:
        return TensorBoardRecords(args.log_dir, every=args.log_every or 10)
    except OSError as error:
        raise CommandError(f"cannot write records in '{args.log_dir}': {error.strerror or error}") from error


def _train(args, output: Path, images: list[str], labels: list[str], device, rank: int, world: int) -> int:
    from .engine.bundled import load_model
    from .engine.checkpoint import save_checkpoint
    from .engine.clickmodel import is_click_model
    from .engine.config import ModelConfig
    from .engine.finetune import FineTuneSettings, fine_tune
    from .engine.heads import class_names_for_labels, head_change
    from .engine.model import AttentionUNet
    from .engine.training import seed_everything

    pairs, scans = _pairs_from_files(images, labels, args.axis)
    highest = int(max(int(p.labels.max()) for p in pairs))
    names = _label_names(args.label_names)
    seed_everything(args.seed)
    if args.init == "none":
        args.dims = args.dims or 2
        widths = (16, 32, 64, 128) if args.dims == 2 else (8, 16, 32, 64)
        gated = () if args.arch == "unet" else tuple(range(1, len(widths)))
        class_names = class_names_for_labels(highest, (), names)
        config = ModelConfig(spatial_dims=args.dims, out_channels=len(class_names), widths=widths,
                             gated_levels=gated, class_names=class_names)
        model = AttentionUNet(config)
    else:
        checkpoint = load_model(args.init)
        config = checkpoint.config
        if args.dims is not None and args.dims != config.spatial_dims:
            raise CommandError(f"--init model is {config.spatial_dims}D but --dims {args.dims} was asked for")
        if args.arch == "unet" and config.gated_levels:
            import dataclasses

            config = dataclasses.replace(config, gated_levels=())
        model = AttentionUNet(config)
        model.load_state_dict(checkpoint.state_dict, strict=False)  # gate weights dropped for --arch unet
        class_names = class_names_for_labels(highest, config.class_names, names)
        if is_click_model(config):
            class_names = None  # a click model's classes are the clicked object's, whatever its label
    change = head_change(model.config.class_names, class_names) if class_names is not None else None
    if change is not None and change.changed and rank == 0:
        print(f"aunet: {change.message(args.init)}", file=sys.stderr)
    # learning rate None: 3e-3 from scratch or for a new head, 1e-3 correcting the model's own classes
    settings = FineTuneSettings(steps=args.steps, time_budget=args.time_budget, learning_rate=args.lr,
                                val_fraction=args.val_fraction, seed=args.seed, from_scratch=args.init == "none",
                                precision=args.precision)
    report = _progress_printer("train", args.quiet or rank > 0)
    records = _open_records(args, rank)
    try:
        result = fine_tune(model, pairs, settings, device=str(device), class_names=class_names, observer=records,
                           progress=(lambda step, total, loss, dice: report(step, total or step)) if report else None)
    finally:
        if records is not None:
            records.close()
    identical = True
    if world > 1:  # DistributedDataParallel keeps the ranks in step: check that they really end identical
        import torch.distributed as dist

        digests = [None] * world
        dist.all_gather_object(digests, _weights_digest(result.model))
        identical = len(set(digests)) == 1
        if rank > 0:
            return 0
        if not identical:
            print("aunet: warning: the ranks ended with different weights; rank 0's are saved", file=sys.stderr)
    provenance = {
        "init": args.init, "arch": args.arch, "seed": args.seed, "ranks": world,
        "images": images, "labels": labels,
        "shapes": [list(p.image.shape) for p in pairs], "axes": [p.axis for p in pairs],
        "annotated_slices": {p.name: p.annotated_slices() for p in pairs},
        "train_slices": result.train_slices, "validation_slices": result.val_slices,
    }
    save_checkpoint(output, result.model, history=result.history(settings), provenance=provenance,
                    model_card=f"Trained by `aunet train` from {args.init} on {len(pairs)} image(s); classes: "
                    f"{', '.join(result.model.config.class_names[1:])}.")
    summary = {"output": str(output), "steps": result.steps, "seconds": round(result.seconds, 1),
               "before": result.before, "after": result.after}
    if world > 1:
        summary.update(ranks=world, weights_identical=identical)
    print(json.dumps(_json_safe(summary), indent=2))
    return 0


def _json_safe(value):
    """NaN (a score with nothing to score) becomes null, so the output is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _device(name: str):
    from .engine.inference import resolve_device

    return resolve_device(name)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine.bundled import load_model
    from .engine.finetune import annotated_slices, evaluate

    pairs, _ = _pairs_from_files([args.image], [args.labels], args.axis)
    pair = pairs[0]
    axis, slices = _parse_slices(args.slices)
    if axis is not None:
        if pair.image.ndim == 3 and not 0 <= axis < 3:
            raise CommandError(f"--slices axis {axis} does not exist in a 3D image")
        pair.axis = axis
    else:
        slices = annotated_slices(pair.labels, pair.axis)
    checkpoint = load_model(args.model)
    pair = pair.at_model_spacing(checkpoint.config)  # scored on the grid the model segments on
    scores = evaluate(checkpoint.build_model(), pair.image, pair.labels.astype(np.int64), slices, pair.axis,
                      str(_device(args.device)))
    scores["axis"] = pair.axis
    print(json.dumps(_json_safe(scores), indent=2))
    return 0


def _parse_point(text: str, ndim: int) -> tuple[int, ...]:
    try:
        point = tuple(int(v) for v in text.split(","))
    except ValueError as error:
        raise CommandError(f"a point is {ndim} comma-separated voxel indices, e.g. 90,120,60; got {text!r}") from error
    if len(point) != ndim:
        raise CommandError(f"point {text!r} has {len(point)} indices; the scan has {ndim} axes")
    return point


def cmd_click(args: argparse.Namespace) -> int:
    from .engine.bundled import load_model
    from .engine.clicks import Click, segment_clicks
    from .engine.inference import Segmenter
    from .io import load_scan, save_labels

    output = Path(args.output)
    if not any(str(output).endswith(s) for s in (".nii", ".nii.gz")):
        raise CommandError(f"output '{output}' must end with .nii or .nii.gz")
    scan = load_scan(args.input)
    volume = _spatial_volume(scan)
    clicks = [Click(_parse_point(p, volume.ndim), True) for p in args.point or []]
    clicks += [Click(_parse_point(p, volume.ndim), False) for p in args.negative or []]
    box = _parse_box(args.box, volume.ndim) if args.box else None
    if not clicks and box is None:
        raise CommandError("give a box (--box) or at least one click (--point)")
    segmenter = Segmenter(load_model(args.model), device=args.device)
    axis = _slicing_axis(args.axis, scan) if volume.ndim == 3 else 0
    started = time.perf_counter()
    mask = segment_clicks(segmenter, volume, clicks, axis=axis, three_d=args.mode == "3d", box=box)
    save_labels(output, mask.astype(np.uint8) * args.label, reference=scan)
    if not args.quiet:
        prompts = f"{len(clicks)} clicks" + (", a box" if box else "")
        print(f"{int(mask.sum())} voxels in the object ({prompts}, axis {axis}, {args.mode}) "
              f"in {time.perf_counter() - started:.2f} s", file=sys.stderr)
        print(output)
    return 0


def cmd_attention_report(args: argparse.Namespace) -> int:
    from .engine.bundled import load_model
    from .engine.importance import level_importance
    from .engine.inference import Segmenter
    from .io import load_scan

    scan = load_scan(args.input)
    volume = _spatial_volume(scan)
    labels = None
    if args.labels:
        label_scan = load_scan(args.labels)
        labels = np.asarray(_spatial_volume(label_scan))
        if labels.shape != volume.shape:
            raise CommandError(f"'{args.labels}' has shape {labels.shape}, but '{args.input}' has {volume.shape}")
    axis, slices = _parse_slices(args.slices)
    if axis is None:
        axis = _slicing_axis(args.axis, scan) if volume.ndim == 3 else 0
    segmenter = Segmenter(load_model(args.model), device=args.device)
    report = level_importance(segmenter, volume, axis=axis, labels=labels, slices=slices, spacing=scan.spacing)
    report = {"input": str(args.input), "model": args.model, "labels": args.labels, **report}
    text = json.dumps(_json_safe(report), indent=2)
    if args.output:
        from ._files import write_atomic

        write_atomic(args.output, (text + "\n").encode("utf-8"))
        if not args.quiet:
            print(args.output)
    else:
        print(text)
    return 0


def _parse_box(text: str, ndim: int) -> tuple[int, tuple[int, int, int, int]]:
    """``Z:R0,C0,R1,C1`` (3D: slice Z along --axis, then two corners in the slice's two other file axes, in order)
    or ``R0,C0,R1,C1`` (2D) -> (slice, box)."""
    index_text, _, corners = text.rpartition(":")
    try:
        values = tuple(int(v) for v in corners.split(","))
        index = int(index_text) if index_text else 0
    except ValueError as error:
        raise CommandError(f"--box takes Z:R0,C0,R1,C1 (whole numbers), got {text!r}") from error
    if len(values) != 4 or (ndim == 3 and not index_text):
        raise CommandError(f"--box takes {'Z:' if ndim == 3 else ''}R0,C0,R1,C1 for this {ndim}D scan, got {text!r}")
    return index, (values[0], values[1], values[2], values[3])


def cmd_demo(args: argparse.Namespace) -> int:
    try:  # napari's window needs a Qt binding; without one qtpy raises deep inside napari's import
        import qtpy  # noqa: F401
    except Exception as error:  # qtpy raises its own error type when no binding is installed
        raise CommandError(
            "aunet demo opens a napari window and needs a Qt binding: pip install PyQt5 (or `make demo`, which "
            "installs everything)"
        ) from error
    from ._demo import run_demo

    return run_demo(screenshot=args.screenshot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aunet",
        description="Attention U-Net segmentation of medical scans, with per-level attention maps.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    segment = sub.add_parser(
        "segment",
        help="segment a scan (or a cohort) and write label volumes (and attention maps)",
        description="Segment IN (NIfTI/Analyze/MGH/NRRD) and write an integer label volume with IN's shape and "
        "affine. With --attention-dir, also write one NIfTI per gated level (level1.nii.gz = finest), each "
        "at its own resolution with an affine that places it over IN. Several inputs, a folder or a glob "
        "segment a cohort into the folder OUT: one task per scan, outputs with the scans' names, a scan that "
        "fails is one line and the rest go on, a re-run skips scans whose output is up to date, and "
        "OUT/summary.csv lists every scan (exit status 1 when any failed). --dask runs the tasks on a Dask "
        "cluster.",
    )
    segment.add_argument("input", metavar="IN", nargs="+",
                         help="scan to segment (.nii, .nii.gz, .hdr/.img, .mgz, .nrrd/.nhdr), or several, "
                              "folders or glob patterns (a cohort)")
    segment.add_argument("-o", "--output", required=True, metavar="OUT",
                         help="label file to write (.nii.gz), or the output folder of a cohort")
    segment.add_argument("--dask", metavar="local|ADDRESS",
                         help="run a cohort's scans on Dask: local (a LocalCluster on this machine) or a scheduler "
                              "address such as tcp://HOST:8786 (needs pip install 'napari-aunet[dask]')")
    segment.add_argument("--workers", type=int, metavar="N",
                         help="worker processes of --dask local (default: one per CPU core; torch threads are "
                              "shared out among them)")
    segment.add_argument("--model", default="default", help="bundled model name (default = brain, brain, phantom) or checkpoint path")
    segment.add_argument("--volumes", metavar="CSV", help="also write each class's voxel count and volume in mL")
    segment.add_argument("--brain-mask", metavar="MASK", help="also write a brain mask (1 = brain) here: every "
                         "labelled voxel of the largest connected group, holes filled (.nii.gz)")
    segment.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    segment.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                         help="auto = fp16 autocast on CUDA, bf16 on a CPU with native bf16 (AVX512-BF16/AMX), "
                         "else fp32; int8 = ONNX Runtime on the CPU, calibrated on the scan (extra [int8])")
    segment.add_argument("--mode", choices=("2d", "3d"), help="2d slice by slice, 3d sliding window (default: the model's)")
    segment.add_argument("--axis", default="auto",
                         help="slicing axis in 2d mode, in the file's array order (auto = axial, from the affine)")
    segment.add_argument("--views", type=int, choices=(1, 3),
                         help="2d: segment along the slicing axis only (1) or along all three axes and average (3); "
                              "default: the model's (brain: 3)")
    segment.add_argument("--nan", choices=("background", "refuse"), default="background",
                         help="NaN or infinite voxels: segment them as the scan's minimum and say how many "
                              "(background, the default) or refuse the scan (refuse)")
    segment.add_argument("--no-crop", dest="crop", action="store_false",
                         help="run the network on the whole field of view; by default it skips the slices and the "
                              "air around the scanned object (labelled background, attention 0 there)")
    segment.add_argument("--roi-size", type=int, default=96, help="3d window size in voxels (default 96)")
    segment.add_argument("--overlap", type=float, default=0.25, help="3d window overlap fraction (default 0.25)")
    segment.add_argument("--batch-size", type=int, default=8, help="slices or windows per batch (default 8)")
    segment.add_argument("--attention-dir", metavar="DIR", help="write level<k>.nii.gz attention maps here")
    segment.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    segment.set_defaults(handler=cmd_segment)

    info = sub.add_parser("info", help="print a model's config and card as JSON",
                          description="Print a bundled model's or checkpoint file's config, model card, history "
                          "and provenance as JSON.")
    info.add_argument("model", metavar="NAME|PATH", help="bundled model name (default = brain, brain, phantom) or checkpoint path")
    info.set_defaults(handler=cmd_info)

    phantom = sub.add_parser("phantom", help="write a synthetic phantom scan (and its labels)",
                             description="Generate a synthetic phantom (organ, small lesions, noise, bias field) "
                             "with known labels 0 background, 1 organ, 2 lesion.")
    phantom.add_argument("output", metavar="OUT", help="image file to write (.nii.gz)")
    phantom.add_argument("--labels", metavar="LABELS", help="also write the ground-truth labels here")
    phantom.add_argument("--shape", default="64,64,32", help="comma-separated size in voxels (default 64,64,32)")
    phantom.add_argument("--spacing", default="1", help="voxel size in mm, one value or one per axis (default 1)")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--uint8", action="store_true", help="store the image as uint8 (like many MRI files)")
    phantom.set_defaults(handler=cmd_phantom)

    train = sub.add_parser(
        "train", help="train or fine-tune a model on (partially) labelled scans",
        description="Train on slices that hold labels (a slice with any non-zero label counts as annotated; "
        "unlabelled slices are ignored, never taught as background). Part of the annotated slices is held out "
        "and Dice/IoU on it is printed before and after, as JSON.")
    train.add_argument("--image", action="append", default=[],
                       help="a scan, or a folder of scans (repeat with --labels)")
    train.add_argument("--labels", action="append", default=[],
                       help="its label file, same grid; or a folder of label files with the scans' names")
    train.add_argument("--manifest", metavar="CSV",
                       help="many pairs: a CSV with image and labels columns (paths relative to the CSV)")
    train.add_argument("--distributed", action="store_true",
                       help="train as one rank of torchrun (DistributedDataParallel; Gloo on CPUs, NCCL on GPUs): "
                            "each rank draws from its share of the slices, rank 0 writes the checkpoint")
    train.add_argument("-o", "--output", required=True, help="checkpoint to write (.safetensors)")
    train.add_argument("--init", default="default",
                       help="start from a bundled model or checkpoint, or none; labels with other classes than "
                       "the model's get a new output head (encoders, decoders and gates kept)")
    train.add_argument("--label-names", metavar="FILE",
                       help="ITK-SNAP label description file naming the label values (the classes the model keeps)")
    train.add_argument("--arch", choices=("attention", "unet"), default="attention",
                       help="unet = the same network with every gate off")
    train.add_argument("--dims", type=int, choices=(2, 3), help="2D or 3D network (default: the init model's, or 2)")
    train.add_argument("--steps", type=int, help="training steps (default 200)")
    train.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop after this much training time")
    train.add_argument("--lr", type=float, help="peak learning rate (default 3e-3 from scratch or onto new classes, "
                       "1e-3 correcting the model's own classes)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="auto = bf16 autocast where the CPU/GPU computes bf16 natively, else fp32")
    train.add_argument("--val-fraction", type=float, default=0.1,
                       help="held-out share of annotated slices (at least one when there are two or more)")
    train.add_argument("--axis", default="auto", help="slicing axis in file order (auto = axial)")
    train.add_argument("--device", default="auto")
    train.add_argument("--log-dir", metavar="DIR",
                       help="write TensorBoard records here (open them with tensorboard --logdir DIR): loss, running "
                            "Dice and learning rate, held-out Dice/IoU per class, each gated level's attention on "
                            "one slice; needs pip install 'napari-aunet[tensorboard]'")
    train.add_argument("--log-every", type=int, metavar="N",
                       help="with --log-dir: the training scalars every N steps (default 10)")
    train.add_argument("-q", "--quiet", action="store_true")
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser(
        "evaluate", help="Dice and IoU of a model against labels, on annotated slices only",
        description='Print JSON {"dice": {class: v}, "iou": {class: v}, "mean_dice": x} computed on the slices '
        "that hold labels, or on --slices AXIS:LIST (e.g. 2:40,50,60-64).")
    evaluate.add_argument("--model", default="default", help="bundled model name or checkpoint path")
    evaluate.add_argument("--image", required=True)
    evaluate.add_argument("--labels", required=True)
    evaluate.add_argument("--slices", metavar="AXIS:LIST", help="evaluate on these slices only")
    evaluate.add_argument("--axis", default="auto", help="slicing axis when --slices is not given")
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(handler=cmd_evaluate)

    click = sub.add_parser(
        "click", help="segment one object from a box and/or positive/negative clicks",
        description="Segment the object inside --box and/or under the positive clicks (voxel indices in the file's "
        "own array order, as nibabel loads it: the order `aunet segment` writes). The box comes first; positive "
        "clicks add to the object, negative clicks take away from it, in the order given (positives first). "
        "Writes a label volume with IN's shape and affine.")
    click.add_argument("input", metavar="IN")
    click.add_argument("--point", action="append", metavar="I,J,K", help="a positive click")
    click.add_argument("--box", metavar="Z:R0,C0,R1,C1",
                       help="a box around the object on slice Z along --axis: two opposite corners in the slice's "
                            "other two file axes, in order (2D scans: R0,C0,R1,C1); clicks then refine it")
    click.add_argument("--negative", action="append", metavar="I,J,K", help="a negative click")
    click.add_argument("-o", "--output", required=True, metavar="OUT")
    click.add_argument("--model", default="click",
                       help="click (the click-guided model, default) or a segmentation model: brain, phantom, PATH")
    click.add_argument("--mode", choices=("2d", "3d"), default="2d",
                       help="2d: the clicked slice only; 3d: propagate through neighbouring slices")
    click.add_argument("--axis", default="auto", help="slicing axis in file order (auto = axial)")
    click.add_argument("--label", type=int, default=1, help="label value of the object (default 1)")
    click.add_argument("--device", default="auto")
    click.add_argument("-q", "--quiet", action="store_true")
    click.set_defaults(handler=cmd_click)

    report = sub.add_parser(
        "attention-report", help="which attention gate does the work: Dice with each gate forced open or closed",
        description="For each gated level: Dice of the model as it is, with that gate forced open (psi = 1) and "
        "closed (psi = 0), against --labels on their annotated slices (or against the model's own output), and "
        "the gate's mean coefficient inside each class and outside; sorted by the Dice lost when the gate is "
        "closed. JSON on stdout or in --output.")
    report.add_argument("input", metavar="IN")
    report.add_argument("--model", default="default", help="bundled model name or checkpoint path (a 2D model)")
    report.add_argument("--labels", help="reference labels on IN's grid: their non-zero slices are scored")
    report.add_argument("--slices", metavar="AXIS:LIST", help="score these slices (default: the annotated ones, "
                        "else 16 evenly spaced slices holding the scan)")
    report.add_argument("--axis", default="auto", help="slicing axis in file order (auto = axial)")
    report.add_argument("--device", default="auto")
    report.add_argument("-o", "--output", metavar="JSON", help="write the report here (atomically)")
    report.add_argument("-q", "--quiet", action="store_true")
    report.set_defaults(handler=cmd_attention_report)

    demo = sub.add_parser("demo", help="open napari with a sample scan, its segmentation and attention layers")
    demo.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the whole window and exit")
    demo.set_defaults(handler=cmd_demo)

    build = sub.add_parser("build-model", help="rebuild a bundled model from its recipe (CPU, fixed seed)")
    build.add_argument("name", choices=("brain", "click", "phantom"))
    build.add_argument("-o", "--output", help="checkpoint to write (default: the bundled file)")
    build.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--data", metavar="DIR", help="folder of the wheels the brain and click recipes read (default "
                       "build/wheels; fill it with: pip download --no-deps nimare==0.22.1 deepmriprep==0.3.0 -d DIR)")
    build.add_argument("-q", "--quiet", action="store_true")
    build.set_defaults(handler=cmd_build_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .engine.checkpoint import CheckpointError
    from .engine.int8 import Int8Unavailable
    from .engine.intensity import BadVolumeError
    from .io import ScanReadError, ScanWriteError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (CommandError, CheckpointError, BadVolumeError, ScanReadError, ScanWriteError, ValueError,
            Int8Unavailable) as error:
        message = " ".join(str(error).split())
        print(f"aunet: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("aunet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
