"""Model configuration: a small value object that round-trips through JSON.

The configuration fully describes the network (so a checkpoint can rebuild it) and the intensity
normalisation the network was trained with (so inference applies the same one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

NORMALIZATION_MODES = ("zscore", "percentile", "ct_window", "none")


@dataclass(frozen=True)
class Normalization:
    """Intensity normalisation applied to every input volume before the network sees it.

    - ``zscore``: subtract the mean and divide by the standard deviation of the voxels above
      ``threshold`` (the whole volume when ``threshold`` is None).
    - ``percentile``: clip to the ``[lower, upper]`` percentiles, then scale to ``[0, 1]``.
    - ``ct_window``: clip Hounsfield units to ``[lower, upper]``, then scale to ``[0, 1]``.
    - ``none``: cast to float32 only.
    """

    mode: str = "percentile"
    lower: float = 0.5
    upper: float = 99.5
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZATION_MODES:
            raise ValueError(f"unknown normalisation mode {self.mode!r}; expected one of {NORMALIZATION_MODES}")
        if self.mode in ("percentile", "ct_window") and not self.lower < self.upper:
            raise ValueError(f"normalisation needs lower < upper, got {self.lower} and {self.upper}")


GATE_GRIDS = ("fine", "coarse", "interpolated")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an (Attention) U-Net.

    ``widths[k-1]`` is the number of feature channels of encoder level ``k`` (level 1 = full resolution,
    level ``k`` is ``2**(k-1)`` times coarser). The deepest level is the bottleneck and has no skip
    connection, so skips (and gates) exist at levels ``1 .. len(widths)-1``. ``gated_levels`` lists the
    skip levels that carry an attention gate: all of them for an Attention U-Net, none for a plain U-Net.
    """

    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 2
    widths: tuple[int, ...] = (16, 32, 64, 128)
    gated_levels: tuple[int, ...] = (1, 2, 3)
    class_names: tuple[str, ...] = ("background", "foreground")
    normalization: Normalization = field(default_factory=Normalization)
    spacing: tuple[float, ...] | None = None  # training voxel spacing in mm, in the file's own axis order
    # "fine": the gate at the skip's own grid with g = the upsampled decoder features (DESIGN.md);
    # "coarse": Oktay et al.'s gate at the coarser grid (strided W_x, g = the coarser features, psi upsampled);
    # "interpolated": the gate at the skip's own grid with g = the coarser features, 1x1-projected and resized
    # bilinearly to the skip's grid (as Oktay et al. resize g): psi carries no 2-pixel pattern of the transposed
    # convolution's four kernel positions
    gate_grid: str = "fine"
    # 2D models: how many slicing axes a 3D scan is segmented along by default (1 = the chosen axis only, 3 = all
    # three with their probabilities averaged, for a model trained on slices of all three axes)
    views: int = 1
    # labels from probabilities: "argmax", or "foreground": background only where it is more likely than all other
    # classes together (for several classes that split one region between them: grey matter, white matter, CSF)
    decision: str = "argmax"
    # what the model was trained on: "mri", "ct", or "" (anything); a scan clearly of the other kind gets a warning
    modality: str = ""

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs compare and hash as values.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "gated_levels", tuple(sorted({int(k) for k in self.gated_levels})))
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        if isinstance(self.normalization, dict):
            object.__setattr__(self, "normalization", Normalization(**self.normalization))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        if self.gate_grid not in GATE_GRIDS:
            raise ValueError(f"gate_grid must be one of {', '.join(GATE_GRIDS)}, got {self.gate_grid!r}")
        if self.modality not in ("", "mri", "ct"):
            raise ValueError(f"modality must be 'mri', 'ct' or empty, got {self.modality!r}")
        if self.decision not in ("argmax", "foreground"):
            raise ValueError(f"decision must be 'argmax' or 'foreground', got {self.decision!r}")
        if self.views not in (1, 3):
            raise ValueError(f"views must be 1 or 3, got {self.views}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if len(self.widths) < 2:
            raise ValueError("a U-Net needs at least two levels (widths of length >= 2)")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive, got {self.widths}")
        if self.in_channels < 1 or self.out_channels < 2:
            raise ValueError("need in_channels >= 1 and out_channels >= 2 (background plus one class)")
        bad = [k for k in self.gated_levels if not 1 <= k < len(self.widths)]
        if bad:
            raise ValueError(
                f"gated levels {bad} do not exist: skip levels are 1..{len(self.widths) - 1} for {len(self.widths)} levels"
            )
        if len(self.class_names) != self.out_channels:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.out_channels} output channels: {self.class_names}"
            )

    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def skip_levels(self) -> tuple[int, ...]:
        return tuple(range(1, self.levels))

    @property
    def size_multiple(self) -> int:
        """Input sizes are padded up to a multiple of this (the bottleneck's downsampling factor)."""
        return 2 ** (self.levels - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("model config must be a JSON object")
        return cls.from_dict(data)
