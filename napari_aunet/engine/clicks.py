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
from scipy import ndimage

from .clickmodel import (
    CLICK_SIGMA,
    box_map,
    deepest_point,
    is_click_model,
    predict_object,
    takes_boxes,
    takes_previous,
)
from .geometry import GridGeometry
from .inference import AttentionMap, Segmenter
from .intensity import check_volume, fill_non_finite, normalize


@dataclass(frozen=True)
class Click:
    point: tuple[int, ...]  # voxel index, file order
    positive: bool = True


#: A click model trained on objects of a few hundred pixels answers a lone click with a region of about that size,
#: even inside a larger structure; shown the window shrunk, it takes more of a large structure and less of a small one.
#: The first click on a slice (and the 3D propagation from it) uses this scale; later clicks see the image at 1:1.
FIRST_CLICK_SCALE = 0.7

#: times a window is doubled (and re-centred on the object) when the object reaches one of its inner edges
GROWTH_STEPS = 3


def cut_by_window(mask: np.ndarray, window: tuple[slice, slice], plane_shape: tuple[int, int]) -> bool:
    """Whether ``mask`` (in ``window``) reaches an edge of the window that is not an edge of the plane: the object
    goes on outside the window and a mask returned as it is would be cut straight there."""
    return bool((window[0].start > 0 and mask[0].any()) or (window[0].stop < plane_shape[0] and mask[-1].any())
                or (window[1].start > 0 and mask[:, 0].any()) or (window[1].stop < plane_shape[1] and mask[:, -1].any()))


def _grown(mask: np.ndarray, window: tuple[slice, slice], size: int) -> tuple[tuple[int, int], int]:
    """The centre (plane coordinates) of the object's bounding box and the next window size."""
    rows, cols = np.nonzero(mask)
    centre = ((int(rows.min()) + int(rows.max())) // 2 + window[0].start,
              (int(cols.min()) + int(cols.max())) // 2 + window[1].start)
    return centre, 2 * size


@dataclass
class ClickUpdate:
    """What one click changed: the object's new mask inside ``region`` (a tuple of slices)."""

    region: tuple[slice, ...]
    mask: np.ndarray  # bool, the object's mask inside region after the click
    seconds: float


def flood_fill(mask: np.ndarray, seed: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` (8/26-connected) holding ``seed``: a voxel index, or a bool
    array of seed voxels (every component touching one is kept). Empty when no seed lies inside ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    if isinstance(seed, np.ndarray) and seed.dtype == bool:
        seeds = seed & mask
    else:
        seeds = np.zeros(mask.shape, bool)
        seeds[tuple(seed)] = mask[tuple(seed)]
    if not seeds.any():
        return seeds
    parts, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    return np.isin(parts, np.unique(parts[seeds]))


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
        self.object_box: tuple[int, int, tuple[int, int, int, int]] | None = None  # (axis, slice, in-plane box)
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
        # Click models: the scale the window is shown at for a slice's first click alone (see FIRST_CLICK_SCALE)
        self.first_click_scale = FIRST_CLICK_SCALE

    # ----- model outputs ------------------------------------------------------------------------
    def _window(self, plane_shape: tuple[int, int], centre: tuple[int, int], size: int | None = None
                ) -> tuple[slice, slice]:
        """A window of at most ``size`` (default ``window``) pixels a side around ``centre``, on a fixed grid so it
        can be reused."""
        spans = []
        for length, c in zip(plane_shape, centre, strict=True):
            side = min(size or self.window, length)
            step = max(side // 2, 1)
            start = int(np.clip((c - side // 2 + step // 2) // step * step, 0, length - side))
            if not start <= c < start + side:
                start = int(np.clip(c - side // 2, 0, length - side))
            spans.append(slice(start, start + side))
        return spans[0], spans[1]

    def foreground(self, axis: int, index: int, window: tuple[slice, slice]) -> np.ndarray:
        """P(not background) on ``window`` of slice ``index`` along ``axis`` (cached)."""
        key = (axis, index, window[0].start, window[0].stop, window[1].start, window[1].stop)
        cached = self._cache.get(key)
        if cached is None:
            probabilities, _ = self.segmenter._run(np.ascontiguousarray(self._window_of(axis, index, window))[None, None])
            cached = self._cache[key] = 1.0 - probabilities[0, 0]
        return cached

    def _window_of(self, axis: int, index: int, window: tuple[slice, slice],
                   array: np.ndarray | None = None) -> np.ndarray:
        """The pixels of ``window`` on slice ``index`` along ``axis`` (no whole-plane copy) of ``array`` (volume
        shape), by default the normalised volume."""
        array = self.volume if array is None else array
        if array.ndim == 2:
            return array[window]
        region: list = list(window)
        region.insert(axis, index)
        return array[tuple(region)]

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

    def _plane_shape(self, axis: int) -> tuple[int, int]:
        shape = self.volume.shape if self.volume.ndim == 2 else tuple(n for a, n in enumerate(self.volume.shape) if a != axis)
        return shape[0], shape[1]

    def _component_on_plane(self, point: tuple[int, ...], axis: int) -> tuple[int, tuple[slice, slice], np.ndarray]:
        """(slice index, in-plane window, 2D bool mask in the window) of the predicted object under ``point``; the
        window grows (re-centred on the object) while the object reaches one of its inner edges."""
        index, clicked = self._plane(point, axis)
        plane_shape = self._plane_shape(axis)
        centre, size = clicked, self.window
        for attempt in range(GROWTH_STEPS + 1):
            window = self._window(plane_shape, centre, size)
            local = (clicked[0] - window[0].start, clicked[1] - window[1].start)
            probability = self.foreground(axis, index, window)
            mask = flood_fill(probability > 0.5, local)
            if attempt == GROWTH_STEPS or not cut_by_window(mask, window, plane_shape):
                break
            centre, size = _grown(mask, window, size)
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
        index, window, seed_mask = self._component_on_plane(point, axis)  # the other slices use its window
        first = max(0, index - self.depth)
        last = min(self.volume.shape[axis] - 1, index + self.depth)
        stack = np.zeros((last - first + 1, *window_shape(window)), bool)
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
        """Forget the clicks and the box of the current object (the next prompt starts a new one)."""
        self.object_clicks = []
        self.object_box = None

    def _guided_on_plane(self, axis: int, index: int, positives: list, negatives: list, box=None,
                         window: tuple[slice, slice] | None = None, scale: float = 1.0,
                         previous: np.ndarray | None = None):
        """Click-guided prediction on one slice: (window, bool mask in the window) from in-plane clicks and an
        optional box ``(row0, col0, row1, col1)``. The window starts at ``window`` pixels a side (at least 1.5x the
        box) around the first click or the box, and grows, re-centred on the object, while the object reaches one
        of its inner edges — so no returned mask is cut straight by the window. A given ``window`` (the first slice's,
        in 3D propagation) is kept as it is. With ``scale`` < 1 the model sees the window shrunk by that factor (a
        window 1/scale times larger, so that it still sees about ``window`` pixels a side). ``previous``: the object's
        mask (volume shape) before this prompt, its window shown to a model that takes it."""
        plane_shape = self._plane_shape(axis)
        growth = GROWTH_STEPS if window is None else 0  # a given window (3D propagation) stays as it is
        if window is None:
            window = self._box_window(plane_shape, box) if box is not None else None
            if positives:
                side = round(self.window / scale) if window is None else self._side(window)
                window = self._window(plane_shape, positives[0], side)
        size = self._side(window)
        for attempt in range(growth + 1):
            offset = (window[0].start, window[1].start)
            local = [[(r - offset[0], c - offset[1]) for r, c in points] for points in (positives, negatives)]
            local_box = None if box is None else (box[0] - offset[0], box[1] - offset[1], box[2] - offset[0],
                                                  box[3] - offset[1])
            shown = None if previous is None else self._window_of(axis, index, window, previous)
            probability = self._predict_scaled(axis, index, window, local, local_box, scale, shown)
            mask = self._object_from(probability > 0.5, local[0], local_box)
            if attempt == growth or not mask.any() or not cut_by_window(mask, window, plane_shape):
                break
            centre, size = _grown(mask, window, size)
            window = self._window(plane_shape, centre, size)
        return window, mask

    def _predict_scaled(self, axis: int, index: int, window: tuple[slice, slice], local: list, local_box,
                        scale: float, previous: np.ndarray | None = None) -> np.ndarray:
        """P(object) on ``window`` from prompts in window pixels (and the previous mask on the window), the model run
        on the window resized by ``scale`` (linear, pixel edges kept aligned) and its output resized back; keeps the
        gate maps when asked."""
        pixels = self._window_of(axis, index, window)
        shape = window_shape(window)
        if scale != 1.0:
            pixels = ndimage.zoom(pixels, scale, order=1, mode="nearest", grid_mode=True)
            factors = [m / n for m, n in zip(pixels.shape, shape, strict=True)]
            local = [[tuple((p + 0.5) * f - 0.5 for p, f in zip(point, factors, strict=True)) for point in points]
                     for points in local]
            if local_box is not None:
                local_box = tuple(round((v + 0.5) * factors[k % 2] - 0.5) for k, v in enumerate(local_box))
            if previous is not None:
                previous = ndimage.zoom(previous.astype(np.float32), scale, order=1, mode="nearest",
                                        grid_mode=True) > 0.5
        if self.keep_attention:
            probability, maps = predict_object(self.segmenter.model, pixels, *local, return_attention=True,
                                               box=local_box, previous=previous)
            self.last_attention = _window_attention(maps, axis if self.volume.ndim == 3 else None, index, window,
                                                    (shape[0] / pixels.shape[0], shape[1] / pixels.shape[1]))
        else:
            probability = predict_object(self.segmenter.model, pixels, *local, box=local_box, previous=previous)
        if scale != 1.0:
            probability = ndimage.zoom(probability, [n / m for n, m in zip(shape, probability.shape, strict=True)],
                                       order=1, mode="nearest", grid_mode=True)
        return probability

    @staticmethod
    def _side(window: tuple[slice, slice]) -> int:
        return max(window_shape(window))

    def _box_window(self, plane_shape: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[slice, slice]:
        """A window around ``box``'s centre of ``window`` pixels, or 1.5x the box rounded up to 16 when larger."""
        extent = max(abs(box[2] - box[0]), abs(box[3] - box[1])) + 1
        centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
        return self._window(plane_shape, centre, max(self.window, -(-int(1.5 * extent) // 16) * 16))

    @staticmethod
    def _object_from(inside: np.ndarray, positives: list, box) -> np.ndarray:
        """The predicted region connected to the positive clicks, or for a box alone its largest part in the box."""
        seeds = np.zeros(inside.shape, bool)
        rows, cols = np.ogrid[: seeds.shape[0], : seeds.shape[1]]
        for r, c in positives:
            if 0 <= r < seeds.shape[0] and 0 <= c < seeds.shape[1]:
                if inside[r, c]:
                    seeds[r, c] = True
                else:  # the model places a small object a pixel or two off the click: take it within the blob
                    seeds |= inside & ((rows - r) ** 2 + (cols - c) ** 2 <= CLICK_SIGMA**2)
        if not positives and box is not None:
            parts, count = ndimage.label(inside & (box_map(inside.shape, box) > 0), np.ones((3, 3)))
            if count:
                seeds = parts == 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(parts), parts, range(1, count + 1))))
        return flood_fill(inside, seeds)

    def _guided_click(self, point: tuple[int, ...] | None, axis: int, three_d: bool, index: int | None = None,
                      current: np.ndarray | None = None):
        """The object from this object's prompts on the slice of ``point`` (or slice ``index``), propagated to the
        neighbouring slices in 3D; None when there is nothing positive to start from (v1 then takes over).
        ``current``: the object's mask (volume shape) before this prompt; a model that takes the previous mask sees
        its slice when this prompt corrects earlier ones on the slice."""
        if index is None:
            index, _ = self._plane(point, axis)
        on_slice = [c for c in self.object_clicks if self._plane(c.point, axis)[0] == index]
        positives = [self._plane(c.point, axis)[1] for c in on_slice if c.positive]
        negatives = [self._plane(c.point, axis)[1] for c in on_slice if not c.positive]
        box = None
        if self.object_box is not None and self.object_box[:2] == (axis, index):
            box = self.object_box[2]
        if not positives and box is None:
            return None  # a negative click before any positive one on this slice: v1 behaviour
        scale = self.first_click_scale if len(positives) == 1 and not negatives and box is None else 1.0
        previous = None
        if current is not None and takes_previous(self.segmenter.config) and len(on_slice) + (box is not None) > 1:
            previous = np.asarray(current, bool)
        window, mask = self._guided_on_plane(axis, index, positives, negatives, box, scale=scale, previous=previous)
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
                _, grown = self._guided_on_plane(axis, current, [anchor], [], window=window, scale=scale)
                if grown.sum() < 5 or not (grown & ndimage.binary_dilation(previous, np.ones((3, 3), bool))).any():  # a few stray pixels end it too
                    break
                if not self._looks_alike(axis, (current - direction, current), window, (previous, grown)):
                    break  # past the structure's end the pseudo-click lands on something else
                stack[current - first] = grown
                previous, current = grown, current + direction
        region = list(window)
        region.insert(axis, slice(first, last + 1))
        return tuple(region), np.moveaxis(stack, 0, axis)

    def _looks_alike(self, axis: int, indices: tuple[int, int], window: tuple[slice, slice],
                     masks: tuple[np.ndarray, np.ndarray]) -> bool:
        """Whether the object on the next slice has the previous slice's appearance: mean intensity within 0.15
        (normalised units, about a sixth of the scan's range) and an area between a third and three times."""
        means = [float(self._window_of(axis, i, window)[m].mean()) for i, m in zip(indices, masks, strict=True)]
        ratio = masks[1].sum() / max(masks[0].sum(), 1)
        return abs(means[1] - means[0]) <= 0.15 and 1 / 3 <= ratio <= 3

    def box(self, current: np.ndarray, axis: int, index: int, box: tuple[int, int, int, int],
            three_d: bool = False) -> ClickUpdate:
        """Segment the object inside ``box`` = (row0, col0, row1, col1), in-plane pixels of slice ``index`` along
        ``axis`` (2D image: axis and index 0). The box starts a new object; later clicks on that slice refine it.

        A click model that takes boxes predicts from the box; other models (v1, older click models) keep the
        largest predicted region inside the box."""
        started = time.perf_counter()
        self.last_attention = {}
        plane_shape = self._plane_shape(axis)
        r0, c0, r1, c1 = (int(v) for v in box)
        r0, r1, c0, c1 = min(r0, r1), max(r0, r1), min(c0, c1), max(c0, c1)
        if self.volume.ndim == 3 and not 0 <= index < self.volume.shape[axis]:
            raise ValueError(f"slice {index} is outside the volume of shape {self.volume.shape}")
        if r1 < 0 or c1 < 0 or r0 >= plane_shape[0] or c0 >= plane_shape[1] or r0 == r1 or c0 == c1:
            raise ValueError(f"the box {box} does not cover pixels of the {plane_shape[0]}x{plane_shape[1]} slice")
        box = (max(r0, 0), max(c0, 0), min(r1, plane_shape[0] - 1), min(c1, plane_shape[1] - 1))
        self.object_clicks = []
        self.object_box = (axis, index if self.volume.ndim == 3 else 0, box)
        if self.guided and takes_boxes(self.segmenter.config):
            region, mask = self._guided_click(None, axis, three_d, index=self.object_box[1])
            return ClickUpdate(region=region, mask=mask, seconds=time.perf_counter() - started)
        centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
        window = self._box_window(plane_shape, box)
        local_box = (box[0] - window[0].start, box[1] - window[1].start, box[2] - window[0].start,
                     box[3] - window[1].start)
        if self.guided:  # a click model without a box input: a click at the box's centre
            pixels = self._window_of(axis, self.object_box[1], window)
            inside = predict_object(self.segmenter.model, pixels,
                                    [(centre[0] - window[0].start, centre[1] - window[1].start)], []) > 0.5
        else:
            inside = self.foreground(axis, self.object_box[1], window) > 0.5
        mask = self._object_from(inside & (box_map(inside.shape, local_box) > 0), [], local_box)
        if self.volume.ndim == 3:
            mask = np.expand_dims(mask, axis)
        region = self._volume_region(axis, self.object_box[1], window)  # the box's object replaces the slice's
        return ClickUpdate(region=region, mask=mask, seconds=time.perf_counter() - started)

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
            guided = self._guided_click(point, axis, three_d, current=current)
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
    segmenter: Segmenter, volume: np.ndarray, clicks: list[Click], axis: int = 0, three_d: bool = False,
    box: tuple[int, tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """Apply ``box`` = (slice index, (row0, col0, row1, col1)) if given, then ``clicks`` in order, to an empty
    object; returns the object's bool mask (volume shape)."""
    session = ClickSegmenter(segmenter, volume)
    current = np.zeros(np.asarray(volume).shape, bool)
    if box is not None:
        update = session.box(current, axis, box[0], box[1], three_d=three_d)
        current[update.region] = update.mask
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


def window_shape(window: tuple[slice, slice]) -> tuple[int, int]:
    """(rows, columns) of an in-plane window."""
    return window[0].stop - window[0].start, window[1].stop - window[1].start


def _window_attention(maps: dict[int, np.ndarray], axis: int | None, index: int,
                      window: tuple[slice, slice], pixel: tuple[float, float] = (1.0, 1.0)) -> dict[int, AttentionMap]:
    """Gate maps of one click window as AttentionMaps on the volume's grid: one slice thick along ``axis``
    (None for a 2D image), each level's cells placed from the window's corner; ``pixel``: image pixels one model
    input pixel covers (1 / the scale the window was shown at)."""
    placed = {}
    for level, data in maps.items():
        pooled = GridGeometry.pooled(2, 2 ** (level - 1))
        corner = GridGeometry(pixel, tuple(float(w.start) + (p - 1) / 2 for w, p in zip(window, pixel, strict=True)))
        attention = AttentionMap(level, data.astype(np.float16), pooled.then(corner))
        placed[level] = attention if axis is None else attention.on_slice(axis, index)
    return placed
