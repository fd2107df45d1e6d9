"""Slice-by-slice 2D segmentation written with MONAI alone: the reference benchmarks/perf.py times.

It imports torch, nibabel, numpy and monai only (nothing of napari_aunet) and does what a short script using
MONAI would do: load the NIfTI with nibabel, normalise like napari_aunet's brain model (clip to the 0.5th
and 98th percentiles of the volume, scale to [0, 1]), build `monai.networks.nets.AttentionUnet(
spatial_dims=2, in_channels=1, out_channels=4, channels=(16, 32, 64, 128), strides=(2, 2, 2))` (the widths
of the bundled brain model), run it in eval mode under torch.inference_mode on the slices along one axis,
`--batch` slices at a time, each padded in-plane to a multiple of 8 (edge replicated) and cropped back,
softmax + argmax per batch, and save the uint8 labels with the scan's affine.

The weights are random (torch.manual_seed(0)): the time and memory of a forward pass do not depend on the
values of the weights, so the labels mean nothing but the cost is that of a trained network of this
architecture.

    python benchmarks/monai_segment.py SCAN -o OUT.nii.gz [--batch 4] [--precision fp32|bf16] [--axis 0]
"""

from __future__ import annotations

import argparse
import contextlib

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import AttentionUnet

CHANNELS = (16, 32, 64, 128)
STRIDES = (2, 2, 2)
CLASSES = 4
MULTIPLE = 8  # 2 ** len(STRIDES): the network halves the grid three times


def build_network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = AttentionUnet(spatial_dims=2, in_channels=1, out_channels=CLASSES, channels=CHANNELS,
                            strides=STRIDES)
    return network.eval()


def normalise(volume: np.ndarray, lower: float = 0.5, upper: float = 98.0) -> np.ndarray:
    low, high = (np.float32(v) for v in np.percentile(volume, [lower, upper]))
    data = np.clip(volume.astype(np.float32), low, high)
    data -= low
    data *= np.float32(1.0 / max(float(high - low), 1e-8))
    return data


def segment(volume: np.ndarray, network: torch.nn.Module, batch: int = 4, axis: int = 0,
            precision: str = "fp32") -> np.ndarray:
    slices = np.moveaxis(normalise(volume), axis, 0)
    count, (height, width) = slices.shape[0], slices.shape[1:]
    pad_h, pad_w = (-height) % MULTIPLE, (-width) % MULTIPLE
    labels = np.empty((count, height, width), dtype=np.uint8)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for start in range(0, count, batch):
            inputs = torch.from_numpy(np.ascontiguousarray(slices[start : start + batch]))[:, None]
            if pad_h or pad_w:
                inputs = F.pad(inputs, (0, pad_w, 0, pad_h), mode="replicate")
            logits = network(inputs)[:, :, :height, :width]
            probabilities = torch.softmax(logits.float(), dim=1)
            labels[start : start + batch] = probabilities.argmax(dim=1).to(torch.uint8).numpy()
    return np.moveaxis(labels, 0, axis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--batch", type=int, default=4, help="slices per forward pass (default 4)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 = torch.autocast(bfloat16) on the CPU")
    parser.add_argument("--axis", type=int, default=0,
                        help="slicing axis in the file's array order (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    image = nib.load(args.scan)
    volume = np.asarray(image.dataobj)
    labels = segment(volume, build_network(args.seed), args.batch, args.axis, args.precision)
    nib.save(nib.Nifti1Image(labels, image.affine), args.output)


if __name__ == "__main__":
    main()
