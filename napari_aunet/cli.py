"""The ``aunet`` command: the engine and the file IO without any GUI.

Every error caused by the input (a broken file, a bad checkpoint, a NaN volume, a wrong option) is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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
    import numpy as np

    data = scan.data
    if data.ndim > scan.spatial_ndim:
        extra = data.shape[scan.spatial_ndim :]
        if int(np.prod(extra)) != 1:
            raise CommandError(
                f"'{scan.path}' has shape {data.shape}: a {len(extra)}-axis series; segment one volume at a time"
            )
        data = data.reshape(data.shape[: scan.spatial_ndim])
    return data


def cmd_segment(args: argparse.Namespace) -> int:
    from .engine.bundled import load_model
    from .engine.inference import Segmenter
    from .io import load_scan, save_attention_maps, save_labels

    output = Path(args.output)
    if not any(str(output).endswith(s) for s in (".nii", ".nii.gz")):
        raise CommandError(f"output '{output}' must end with .nii or .nii.gz")
    scan = load_scan(args.input)
    volume = _spatial_volume(scan)
    checkpoint = load_model(args.model)
    segmenter = Segmenter(checkpoint, device=args.device, precision=args.precision, batch_size=args.batch_size)
    mode = args.mode or f"{checkpoint.config.spatial_dims}d"
    axis = _slicing_axis(args.axis, scan) if mode == "2d" else None
    started = time.perf_counter()
    result = segmenter.segment(
        volume,
        mode=mode,
        axis=axis or 0,
        roi_size=args.roi_size,
        overlap=args.overlap,
        return_attention=args.attention_dir is not None,
        progress=_progress_printer("segment", args.quiet),
    )
    elapsed = time.perf_counter() - started
    save_labels(output, result.labels, reference=scan)
    written = [str(output)]
    if args.attention_dir is not None:
        folder = Path(args.attention_dir)
        folder.mkdir(parents=True, exist_ok=True)
        maps = {level: (m.data, m.geometry.affine(scan.affine)) for level, m in result.attention.items()}
        written += [str(p) for p in save_attention_maps(folder, maps, header=scan.header, file_format=scan.format)]
    if not args.quiet:
        counts = {
            name: int((result.labels == index).sum())
            for index, name in enumerate(result.class_names)
            if index > 0
        }
        print(
            f"segmented {scan.data.shape} on {segmenter.device.type} ({mode}"
            f"{f', axis {axis}' if axis is not None else ''}) in {elapsed:.1f} s; voxels per class: {counts}",
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
    from .engine.bundled import build_bundled_model, resources_dir

    output = Path(args.output) if args.output else resources_dir() / "models" / f"{args.name}.safetensors"
    started = time.perf_counter()
    build_bundled_model(
        args.name, output, steps=args.steps, seed=args.seed, progress=_progress_printer("train", args.quiet)
    )
    print(f"wrote {output} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
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
        help="segment a scan and write a label volume (and attention maps)",
        description="Segment IN (NIfTI/Analyze/MGH) and write an integer label volume with IN's shape and "
        "affine. With --attention-dir, also write one NIfTI per gated level (level1.nii.gz = finest), each "
        "at its own resolution with an affine that places it over IN.",
    )
    segment.add_argument("input", metavar="IN", help="scan to segment (.nii, .nii.gz, .hdr/.img, .mgz)")
    segment.add_argument("-o", "--output", required=True, metavar="OUT", help="label file to write (.nii.gz)")
    segment.add_argument("--model", default="default", help="bundled model name (default, phantom) or checkpoint path")
    segment.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    segment.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                         help="auto = fp16 autocast on CUDA, fp32 on the CPU")
    segment.add_argument("--mode", choices=("2d", "3d"), help="2d slice by slice, 3d sliding window (default: the model's)")
    segment.add_argument("--axis", default="auto",
                         help="slicing axis in 2d mode, in the file's array order (auto = axial, from the affine)")
    segment.add_argument("--roi-size", type=int, default=96, help="3d window size in voxels (default 96)")
    segment.add_argument("--overlap", type=float, default=0.25, help="3d window overlap fraction (default 0.25)")
    segment.add_argument("--batch-size", type=int, default=8, help="slices or windows per batch (default 8)")
    segment.add_argument("--attention-dir", metavar="DIR", help="write level<k>.nii.gz attention maps here")
    segment.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    segment.set_defaults(handler=cmd_segment)

    info = sub.add_parser("info", help="print a model's config and card as JSON",
                          description="Print a bundled model's or checkpoint file's config, model card, history "
                          "and provenance as JSON.")
    info.add_argument("model", metavar="NAME|PATH", help="bundled model name (default, phantom) or checkpoint path")
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

    demo = sub.add_parser("demo", help="open napari with a sample scan, its segmentation and attention layers")
    demo.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the whole window and exit")
    demo.set_defaults(handler=cmd_demo)

    build = sub.add_parser("build-model", help="rebuild a bundled model from its recipe (CPU, fixed seed)")
    build.add_argument("name", choices=("phantom",))
    build.add_argument("-o", "--output", help="checkpoint to write (default: the bundled file)")
    build.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("-q", "--quiet", action="store_true")
    build.set_defaults(handler=cmd_build_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .engine.checkpoint import CheckpointError
    from .engine.intensity import BadVolumeError
    from .io import ScanReadError, ScanWriteError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (CommandError, CheckpointError, BadVolumeError, ScanReadError, ScanWriteError, ValueError) as error:
        message = " ".join(str(error).split())
        print(f"aunet: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("aunet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
