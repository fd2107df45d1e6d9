"""Random headers and arrays through the NIfTI and NRRD readers and the segmenter: only our plain errors come out
(one line, our exception types), never a traceback from nibabel, numpy or torch, never an allocation the file
cannot back."""

from __future__ import annotations

import gzip
import math

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_aunet.engine.bundled import load_model
from napari_aunet.engine.inference import Segmenter
from napari_aunet.engine.intensity import BadVolumeError
from napari_aunet.io import ScanReadError, load_scan

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NIFTI_TYPES = [2, 4, 8, 16, 64, 256, 512, 768, 32, 128, 2304, 1, 0, 3, 999]  # valid ones and some that are not
odd_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(load_model("phantom"), device="cpu", precision="fp32")


def _load_then_segment(path, segmenter) -> None:
    """The file loads and then segments or is refused with our one-line error, or the reader refuses it so."""
    try:
        scan = load_scan(path)
    except ScanReadError as error:
        assert "\n" not in str(error) and str(error).startswith("cannot read")
        event("refused by the reader")
        return
    event("loaded")
    _segment_or_plain_error(segmenter, scan)


def _segment_or_plain_error(segmenter, scan) -> None:
    """A scan that loaded either segments or is refused with our one-line error."""
    volume = np.asarray(scan.data)
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    try:
        result = segmenter.segment(volume, axis=0, return_attention=False)
    except (BadVolumeError, ValueError) as error:
        assert "\n" not in str(error) and "Traceback" not in str(error)
        return
    assert result.labels.shape == volume.shape


@FUZZ
@given(ndim=st.integers(0, 8), sizes=st.lists(st.one_of(st.integers(-2, 12), st.integers(-2, 32_767)), min_size=7, max_size=7),
       datatype=st.sampled_from(NIFTI_TYPES), offset=st.integers(0, 2000), slope=odd_floats, inter=odd_floats,
       pixdim=st.lists(odd_floats, min_size=8, max_size=8), qcode=st.integers(-3, 5), body=st.integers(0, 20_000),
       compress=st.booleans(), seed=st.integers(0, 2**16), exact=st.booleans())
def test_random_nifti_headers_give_only_plain_errors(tmp_path, segmenter, ndim, sizes, datatype, offset, slope,
                                                     inter, pixdim, qcode, body, compress, seed, exact):
    header = nib.Nifti1Header()
    header["dim"] = [ndim, *sizes]
    header["datatype"] = datatype
    header["bitpix"] = 8
    header["vox_offset"] = offset
    header["scl_slope"], header["scl_inter"] = slope, inter
    header["pixdim"] = pixdim
    header["qform_code"] = header["sform_code"] = qcode
    if exact:  # as many bytes as the header asks for, when that is small: such files get past the reader
        itemsize = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 32: 8, 128: 3, 2304: 4}.get(datatype, 1)
        voxels = math.prod(max(1, n) for n in sizes[: max(0, min(ndim, 7))])
        body = voxels * itemsize if voxels * itemsize <= 400_000 else body
    payload = header.binaryblock + b"\0" * 4 + np.random.default_rng(seed).bytes(body)
    path = tmp_path / ("fuzz.nii.gz" if compress else "fuzz.nii")
    path.write_bytes(gzip.compress(payload) if compress else payload)
    _load_then_segment(path, segmenter)


@FUZZ
@given(kind=st.sampled_from(["uint8", "int16", "float", "double", "short", "int", "block", "quux", ""]),
       dimension=st.integers(-1, 5), sizes=st.lists(st.one_of(st.integers(-2, 12), st.integers(-2, 70_000)), max_size=5),
       encoding=st.sampled_from(["raw", "gzip", "ascii", "hex", "bzip2", ""]),
       endian=st.sampled_from(["little", "big", ""]), spacing=st.lists(odd_floats, min_size=0, max_size=4),
       body=st.binary(max_size=4000), extra=st.text(max_size=40))
def test_random_nrrd_headers_give_only_plain_errors(tmp_path, segmenter, kind, dimension, sizes, encoding, endian,
                                                    spacing, body, extra):
    lines = ["NRRD0004", f"type: {kind}", f"dimension: {dimension}", f"sizes: {' '.join(map(str, sizes))}",
             f"encoding: {encoding}"]
    if endian:
        lines.append(f"endian: {endian}")
    if spacing:
        lines.append(f"spacings: {' '.join(map(str, spacing))}")
    if extra.strip() and "\n" not in extra:
        lines.append(extra)
    data = gzip.compress(body) if encoding == "gzip" else body
    path = tmp_path / "fuzz.nrrd"
    path.write_bytes(("\n".join(lines) + "\n\n").encode("utf-8", "replace") + data)
    _load_then_segment(path, segmenter)
