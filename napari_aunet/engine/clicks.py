"""Click to segment (v1): the current model on a region around the click, the connected part under it.

A positive click runs the model on a window of the click's slice (cached per slice and window), takes the
predicted foreground (any non-background class) and adds the connected component that holds the click to
the current object; a negative click removes the connected part of the object under it. In 3D the object
is propagated slice by slice from the clicked slice while it stays connected and non-empty.
All indices are voxel indices in the file's own array order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .clickmodel import CLICK_SIGMA, deepest_point, is_click_model, predict_object
from .geometry import GridGeometry
from .inference import AttentionMap, Segmenter
from .intensity import check_volume, fill_non_finite, normalize


@dataclass(frozen=True)
class Click:
    point: tuple[int, ...]  # voxel index, file order
    positive: bool = True


@dataclass
class ClickUpdate:
    """What one click changed: the object's new mask inside ``region`` (a tuple of slices)."""

    region: tuple[slice, ...]
    mask: np.ndarray  # bool, the object's mask inside region after the click
    seconds: float


def _dilate(region: np.ndarray) -> np.ndarray:
    """3x3(x3) box dilation of a bool array (8/26-connectivity), by shifted ORs along each axis."""
    out = region
    for axis in range(region.ndim):
        grown = out.copy()
        lower = [slice(None)] * region.ndim
        upper = [slice(None)] * region.ndim
        lower[axis], upper[axis] = slice(1, None), slice(None, -1)
        grown[tuple(lower)] |= out[tuple(upper)]
        grown[tuple(upper)] |= out[tuple(lower)]
        out = grown
    return out


def flood_fill(mask: np.ndarray, seed: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` (8/26-connected) holding ``seed``: a voxel index, or a bool
    array of seed voxels (every component touching one is kept). Empty when no seed lies inside ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    if isinstance(seed, np.ndarray) and seed.dtype == bool:
        region = seed & mask
    else:
        region = np.zeros(mask.shape, bool)
        region[tuple(seed)] = mask[tuple(seed)]
    if not region.any():
        return region
    count = -1
    while True:
        for _ in range(8):
            region = _dilate(region) & mask
        total = int(np.count_nonzero(region))
        if total == count:
            return region
        count = total


class ClickSegmenter:
    """Interactive segmentation of one volume; keeps normalised data and per-slice predictions cached."""

    def __init__(self, segmenter: Segmenter, volume: np.ndarray, *, window: int = 128, depth: int = 24) -> None:
        volume, self.non_finite = fill_non_finite(np.asarray(volume))  # NaN/Inf: the scan's minimum, as in Segment
        check_volume(volume)
        if segmenter.config.spatial_dims != 2:
            raise ValueError("click segmentation needs a 2D model (it works slice by slice)")
        self.guided = is_click_model(segmenter.config)
        if not self.guided and segmenter.config.in_channels != 1:
            raise ValueError(f"a model with {segmenter.config.in_channels} input channels is not a click model")
        self.object_clicks: list[Click] = []  # clicks on the current object (click-guided models)
        self.segmenter = segmenter
        self.volume = normalize(volume, segmenter.config.normalization)
        self.window = int(window)
        self.depth = int(depth)
        self.prefetch_slices = 8  # 3D: neighbouring slices predicted per batch while propagating
        self._cache: dict[tuple, np.ndarray] = {}
        # Click models: keep the gate maps of the last clicked slice's window (AttentionMap per level, placed
        # on the volume's grid) so they can be shown; off by default, it costs a copy per click.
        self.keep_attention = False
        self.last_attention: dict[int, AttentionMap] = {}

    # ----- model outputs ------------------------------------------------------------------------
    def _window(self, plane_shape: tuple[int, int], centre: tuple[int, int]) -> tuple[slice, slice]:
        """A window of at most ``window`` pixels a side around ``centre``, on a fixed grid so it can be reused."""
        spans = []
        for length, c in zip(plane_shape, centre, strict=True):
            size = min(self.window, length)
            step = max(size // 2, 1)
            start = int(np.clip((c - size // 2 + step // 2) // step * step, 0, length - size))
            if not start <= c < start + size:
                start = int(np.clip(c - size // 2, 0, length - size))
            spans.append(slice(start, start + size))
        return spans[0], spans[1]

    def foreground(self, axis: int, index: int, window: tuple[slice, slice]) -> np.ndarray:
        """P(not background) on ``window`` of slice ``index`` along ``axis`` (cached)."""
        key = (axis, index, window[0].start, window[0].stop, window[1].start, window[1].stop)
        cached = self._cache.get(key)
        if cached is None:
            probabilities, _ = self.segmenter._run(np.ascontiguousarray(self._window_of(axis, index, window))[None, None])
            cached = self._cache[key] = 1.0 - probabilities[0, 0]
        return cached

    def _window_of(self, axis: int, index: int, window: tuple[slice, slice]) -> np.ndarray:
        """The normalised pixels of ``window`` on slice ``index`` along ``axis`` (no whole-plane copy)."""
        if self.volume.ndim == 2:
            return self.volume[window]
        region: list = list(window)
        region.insert(axis, index)
        return self.volume[tuple(region)]

    def prefetch(self, axis: int, indices: list[int], window: tuple[slice, slice]) -> None:
        """Run the model on the uncached slices among ``indices`` in one batch (faster than one by one)."""
        missing = [i for i in indices if (axis, i, window[0].start, window[0].stop, window[1].start,
                                          window[1].stop) not in self._cache]
        if not missing:
            return
        planes = np.stack([self._window_of(axis, i, window) for i in missing])[:, None]
        probabilities, _ = self.segmenter._run(np.ascontiguousarray(planes))
        for i, probability in zip(missing, probabilities, strict=True):
            key = (axis, i, window[0].start, window[0].stop, window[1].start, window[1].stop)
            self._cache[key] = 1.0 - probability[0]

    # ----- clicks -------------------------------------------------------------------------------
    def _plane(self, point: tuple[int, ...], axis: int) -> tuple[int, tuple[int, int]]:
        if self.volume.ndim == 2:
            return 0, (point[0], point[1])
        in_plane = tuple(p for a, p in enumerate(point) if a != axis)
        return point[axis], (in_plane[0], in_plane[1])

    def _component_on_plane(self, point: tuple[int, ...], axis: int) -> tuple[int, tuple[slice, slice], np.ndarray]:
        """(slice index, in-plane window, 2D bool mask in the window) of the predicted object under ``point``."""
        index, centre = self._plane(point, axis)
        plane_shape = self.volume.shape if self.volume.ndim == 2 else tuple(
            n for a, n in enumerate(self.volume.shape) if a != axis
        )
        window = self._window(plane_shape, centre)
        local = (centre[0] - window[0].start, centre[1] - window[1].start)
        probability = self.foreground(axis, index, window)
        mask = flood_fill(probability > 0.5, local)
        if not mask.any():  # the model sees background here: a small disk so the click is never lost
            rows, cols = np.ogrid[: probability.shape[0], : probability.shape[1]]
            mask = (rows - local[0]) ** 2 + (cols - local[1]) ** 2 <= 4
        return index, window, mask

    def component_2d(self, point: tuple[int, ...], axis: int) -> tuple[tuple[slice, ...], np.ndarray]:
        """The predicted object under ``point`` on its slice: (region in the volume, bool mask of the region)."""
        index, window, mask = self._component_on_plane(point, axis)
        if self.volume.ndim == 3:
            mask = np.expand_dims(mask, axis)
        return self._volume_region(axis, index, window), mask

    def _volume_region(self, axis: int, index: int, window: tuple[slice, slice]) -> tuple[slice, ...]:
        if self.volume.ndim == 2:
            return window
        region = list(window)
        region.insert(axis, slice(index, index + 1))
        return tuple(region)

    def component_3d(self, point: tuple[int, ...], axis: int) -> tuple[tuple[slice, ...], np.ndarray]:
        """The object under ``point`` propagated through neighbouring slices (up to ``depth`` each way)."""
        if self.volume.ndim == 2:
            return self.component_2d(point, axis)
        index, centre = self._plane(point, axis)
        plane_shape = tuple(n for a, n in enumerate(self.volume.shape) if a != axis)
        window = self._window(plane_shape, centre)
        first = max(0, index - self.depth)
        last = min(self.volume.shape[axis] - 1, index + self.depth)
        stack = np.zeros((last - first + 1, window[0].stop - window[0].start, window[1].stop - window[1].start), bool)
        _, _, seed_mask = self._component_on_plane(point, axis)
        stack[index - first] = seed_mask
        for direction in (1, -1):
            previous = seed_mask
            current = index + direction
            while first <= current <= last and previous.any():
                if (current - index) % self.prefetch_slices == direction % self.prefetch_slices:
                    ahead = range(current, current + direction * self.prefetch_slices, direction)
                    self.prefetch(axis, [i for i in ahead if first <= i <= last], window)
                candidate = self.foreground(axis, current, window) > 0.5
                grown = flood_fill(candidate, previous)  # the parts connected to the previous slice's object
                if not grown.any():
                    break
                stack[current - first] = grown
                previous = grown
                current += direction
        region = list(window)
        region.insert(axis, slice(first, last + 1))
        return tuple(region), np.moveaxis(stack, 0, axis)

    def new_object(self) -> None:
        """Forget the clicks of the current object (the next click starts a new one)."""
        self.object_clicks = []

    def _guided_on_plane(self, axis: int, index: int, positives: list, negatives: list):
        """Click-guided prediction on one slice: (window, bool mask in the window) from file-order clicks."""
        plane_shape = self.volume.shape if self.volume.ndim == 2 else tuple(
            n for a, n in enumerate(self.volume.shape) if a != axis
        )
        anchor = positives[0]
        window = self._window(plane_shape, anchor)
        local = [[(r - window[0].start, c - window[1].start) for r, c in points] for points in (positives, negatives)]
        pixels = self._window_of(axis, index, window)
        if self.keep_attention:
            probability, maps = predict_object(self.segmenter.model, pixels, *local, return_attention=True)
            self.last_attention = _window_attention(maps, axis if self.volume.ndim == 3 else None, index, window)
        else:
            probability = predict_object(self.segmenter.model, pixels, *local)
        inside = probability > 0.5
        seeds = np.zeros(probability.shape, bool)
        rows, cols = np.ogrid[: seeds.shape[0], : seeds.shape[1]]
        for r, c in local[0]:
            if 0 <= r < seeds.shape[0] and 0 <= c < seeds.shape[1]:
                if inside[r, c]:
                    seeds[r, c] = True
                else:  # the model places a small object a pixel or two off the click: take it within the blob
                    seeds |= inside & ((rows - r) ** 2 + (cols - c) ** 2 <= CLICK_SIGMA**2)
        return window, flood_fill(inside, seeds)

    def _guided_click(self, point: tuple[int, ...], axis: int, three_d: bool):
        index, _ = self._plane(point, axis)
        on_slice = [c for c in self.object_clicks if self._plane(c.point, axis)[0] == index]
        positives = [self._plane(c.point, axis)[1] for c in on_slice if c.positive]
        negatives = [self._plane(c.point, axis)[1] for c in on_slice if not c.positive]
        if not positives:
            return None  # a negative click before any positive one on this slice: v1 behaviour
        window, mask = self._guided_on_plane(axis, index, positives, negatives)
        if not three_d or self.volume.ndim == 2:
            if self.volume.ndim == 3:
                mask = np.expand_dims(mask, axis)
            return self._volume_region(axis, index, window), mask
        first = max(0, index - self.depth)
        last = min(self.volume.shape[axis] - 1, index + self.depth)
        stack = np.zeros((last - first + 1, *mask.shape), bool)
        stack[index - first] = mask
        for direction in (1, -1):
            previous, current = mask, index + direction
            while first <= current <= last and previous.sum() >= 5:
                inner = deepest_point(previous)
                anchor = (inner[0] + window[0].start, inner[1] + window[1].start)
                _, grown = self._guided_on_plane(axis, current, [anchor], [])
                if grown.sum() < 5 or not (grown & _dilate(previous)).any():  # a few stray pixels end it too
                    break
                stack[current - first] = grown
                previous, current = grown, current + direction
        region = list(window)
        region.insert(axis, slice(first, last + 1))
        return tuple(region), np.moveaxis(stack, 0, axis)

    def click(self, current: np.ndarray, click: Click, axis: int = 0, three_d: bool = False) -> ClickUpdate:
        """Apply one click to ``current`` (bool object mask, volume shape); returns the changed region.

        With a click-guided model the object on the clicked slice is predicted from all of this object's
        clicks on that slice (positive and negative); otherwise (v1) positive clicks add the predicted
        region under them and negative clicks remove the part of the object under them.
        """
        started = time.perf_counter()
        self.last_attention = {}
        point = tuple(int(p) for p in click.point)
        if len(point) != self.volume.ndim or any(not 0 <= p < n for p, n in zip(point, self.volume.shape, strict=True)):
            raise ValueError(f"click {point} is outside the volume of shape {self.volume.shape}")
        if self.guided:
            self.object_clicks.append(Click(point, click.positive))
            guided = self._guided_click(point, axis, three_d)
            if guided is not None:
                region, mask = guided
                return ClickUpdate(region=region, mask=mask, seconds=time.perf_counter() - started)
        if click.positive:
            region, component = (self.component_3d if three_d else self.component_2d)(point, axis)
            mask = current[region] | component
        else:
            index, _ = self._plane(point, axis)
            if three_d and self.volume.ndim == 3:
                region = tuple(slice(0, n) for n in self.volume.shape)
            else:
                region = self._volume_region(axis, index, (slice(0, None), slice(0, None)))
                region = tuple(slice(r.start, r.stop if r.stop is not None else n)
                               for r, n in zip(region, self.volume.shape, strict=True))
            local = tuple(p - r.start for p, r in zip(point, region, strict=True))
            inside = current[region]
            mask = inside & ~flood_fill(inside, local)
        return ClickUpdate(region=region, mask=mask, seconds=time.perf_counter() - started)


def segment_clicks(
    segmenter: Segmenter, volume: np.ndarray, clicks: list[Click], axis: int = 0, three_d: bool = False
) -> np.ndarray:
    """Apply ``clicks`` in order to an empty object; returns the object's bool mask (volume shape)."""
    session = ClickSegmenter(segmenter, volume)
    current = np.zeros(np.asarray(volume).shape, bool)
    for click in clicks:
        update = session.click(current, click, axis=axis, three_d=three_d)
        current[update.region] = update.mask
    return current


def simulated_click_scores(
    segmenter: Segmenter, image: np.ndarray, target: np.ndarray, counts: tuple[int, ...] = (1, 3, 5),
    window: int = 128,
) -> dict[int, tuple[float, float]]:
    """(Dice, IoU) of one object after each of ``counts`` simulated clicks on a 2D image.

    The simulated user of DeepEdit/RITM evaluations: the first click at the deepest point of the object, each
    next click at the deepest point of the largest error region (positive where the object was missed,
    negative where the mask overflowed), through the same :class:`ClickSegmenter` the GUI and CLI use.
    """
    from .clickmodel import next_click

    session = ClickSegmenter(segmenter, image, window=window)
    current = np.zeros(target.shape, bool)
    scores: dict[int, tuple[float, float]] = {}
    click = (deepest_point(target), True)
    for count in range(1, max(counts) + 1):
        if click is not None:
            update = session.click(current, Click(click[0], click[1]), axis=0)
            current[update.region] = update.mask
        if count in counts:
            overlap, total = float((current & target).sum()), float(current.sum() + target.sum())
            scores[count] = (2 * overlap / max(total, 1.0), overlap / max(total - overlap, 1.0))
        click = next_click(current, target)
    return scores


def _window_attention(maps: dict[int, np.ndarray], axis: int | None, index: int,
                      window: tuple[slice, slice]) -> dict[int, AttentionMap]:
    """Gate maps of one click window as AttentionMaps on the volume's grid: one slice thick along ``axis``
    (None for a 2D image), each level's cells placed from the window's corner."""
    placed = {}
    for level, data in maps.items():
        pooled = GridGeometry.pooled(2, 2 ** (level - 1))
        corner = GridGeometry((1.0, 1.0), tuple(float(w.start) for w in window))
        attention = AttentionMap(level, data.astype(np.float16), pooled.then(corner))
        placed[level] = attention if axis is None else attention.on_slice(axis, index)
    return placed
