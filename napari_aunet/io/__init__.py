"""Scan file input/output (NIfTI-1/2, Analyze, MGH) in the file's own axis order.

Imports only nibabel, numpy and the standard library.
"""

from napari_aunet.io.attention import save_attention_maps
from napari_aunet.io.scan import (
    NIFTI_SUFFIXES,
    READ_SUFFIXES,
    Scan,
    ScanReadError,
    ScanWriteError,
    has_suffix,
    load_scan,
    save_image,
    save_labels,
    scan_from_array,
    scan_name,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "READ_SUFFIXES",
    "Scan",
    "ScanReadError",
    "ScanWriteError",
    "has_suffix",
    "load_scan",
    "save_attention_maps",
    "save_image",
    "save_labels",
    "scan_from_array",
    "scan_name",
]
