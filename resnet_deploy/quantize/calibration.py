"""Activation calibration: the calibration images, the pass that feeds them through the observers,
and how the range of each activation tensor is chosen from what they saw.

The images are ``calibration_batches``: a seeded sample of the training split (never the test split);
``run_calibration`` feeds them through a prepared model in batches of 100.

Methods (``--method``):

``minmax``      the largest magnitude seen (symmetric) or the observed [min, max] (asymmetric).
                Exact, but one outlier pixel stretches the grid for everything else.
``ema``         moving-average min-max: per-batch min/max averaged with weight ``EMA_CONSTANT``
                (torchao's MovingAverageMinMaxObserver), which discounts rare extremes.
``percentile``  clip at the p-th percentile of |x| (symmetric) or at the (100-p)/p percentiles of x
                (asymmetric); 99.99 by default.
``entropy``     TensorRT's calibrator: the clipping threshold whose quantized distribution is closest
                to the observed one in KL divergence (on |x|, 128 levels for int8), exact zeros
                skipped (as pytorch-quantization's ``skip_zeros``: a ReLU's zero spike otherwise
                drags the threshold down to a quarter of the range).
``mse``         the range that minimises the expected squared quantization error: uniform rounding
                noise (step^2 / 12) for values inside the range, squared distance to the edge for
                values clipped, computed from the histogram for every candidate range.

``percentile``, ``entropy`` and ``mse`` share one histogram observer: a fixed-width histogram of the
tensor (of |x| for symmetric schemes) that widens by whole bins when a later batch exceeds the range
and halves its resolution by merging bin pairs when it grows past its budget, so nothing seen is
re-binned approximately. Exact zeros (half of a ReLU's outputs) are counted apart: 0 is on every
grid, so they carry no rounding error and must not pull the MSE search.

Weights always use per-channel symmetric min-max: their values are all known, and a clipped weight is
an error on every input.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import progress
from ..data import ImageDataset, Normalization, calibration_indices, normalized_batches
from ..errors import UserError
from ..quantize_choices import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHODS  # noqa: F401 (re-exported)

EMA_CONSTANT = 0.1
HISTOGRAM_BINS = 2048


def check_method(method: str, percentile: float = DEFAULT_PERCENTILE) -> None:
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (50.0 < percentile <= 100.0):
        raise UserError(f"--percentile must be in (50, 100], got {percentile}")


def check_calib_size(size: int, dataset: ImageDataset) -> None:
    if size <= 0:
        raise UserError(f"--calib-size must be positive, got {size}")
    if size > len(dataset.train_images):
        raise UserError(f"--calib-size {size} exceeds the {len(dataset.train_images)} training images")


def calibration_batches(dataset: ImageDataset, size: int) -> np.ndarray:
    """The deterministic calibration split (training images only; never the test split)."""
    return dataset.train_images[calibration_indices(len(dataset.train_images), size)]


def run_calibration(prepared: torch.fx.GraphModule, images: np.ndarray, normalization: Normalization, batch_size: int = 100) -> float:
    """Feed the calibration images through the observers; returns seconds taken."""
    start = time.perf_counter()
    with torch.no_grad(), progress.bar("calibrating", len(images)) as bar:
        for batch in normalized_batches(images, normalization, batch_size):
            prepared(batch)
            bar.advance(len(batch))
    return time.perf_counter() - start


def activation_observer(method: str, scheme, percentile: float = DEFAULT_PERCENTILE):
    """An observer constructor (``ObserverBase.with_args``) for activations under ``scheme``."""
    from torchao.quantization.pt2e import MinMaxObserver, MovingAverageMinMaxObserver

    check_method(method, percentile)
    common = dict(
        dtype=scheme.activation_dtype,
        qscheme=scheme.activation_qscheme,
        quant_min=scheme.activation_range[0],
        quant_max=scheme.activation_range[1],
    )
    if method == "minmax":
        return MinMaxObserver.with_args(**common)
    if method == "ema":
        return MovingAverageMinMaxObserver.with_args(averaging_constant=EMA_CONSTANT, **common)
    return histogram_observer_class().with_args(method=method, percentile=percentile, **common)


def weight_observer():
    """Per-output-channel symmetric min-max (the scheme fixes dtype/range through the spec)."""
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    return PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric, ch_axis=0, quant_min=-127, quant_max=127)


_HISTOGRAM_CLASS = None


def histogram_observer_class():
    """The histogram observer class, built on first use (it subclasses a torchao class)."""
    global _HISTOGRAM_CLASS
    if _HISTOGRAM_CLASS is None:
        _HISTOGRAM_CLASS = _build_histogram_observer()
    return _HISTOGRAM_CLASS


def _build_histogram_observer():
    from torchao.quantization.pt2e import UniformQuantizationObserverBase

    class RangeHistogramObserver(UniformQuantizationObserverBase):
        """Histogram of an activation; ``calculate_qparams`` picks the range by ``method``."""

        def __init__(self, method: str = "mse", percentile: float = DEFAULT_PERCENTILE, bins: int = HISTOGRAM_BINS, **kwargs):
            kwargs.pop("is_dynamic", None)
            super().__init__(**kwargs)
            self.method = method
            self.percentile = percentile
            self.bins = bins
            self.symmetric = self.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
            self.register_buffer("min_val", torch.tensor(float("inf")))
            self.register_buffer("max_val", torch.tensor(float("-inf")))
            self.histogram = _GridHistogram(bins)

        def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
            if x_orig.numel() == 0:
                return x_orig
            x = x_orig.detach().float()
            low, high = torch.aminmax(x)
            self.min_val.copy_(torch.minimum(low, self.min_val))
            self.max_val.copy_(torch.maximum(high, self.max_val))
            if self.symmetric:
                self.histogram.add(x.abs(), 0.0, float(torch.maximum(-low, high)))
            else:
                self.histogram.add(x, float(low), float(high))
            return x_orig

        def chosen_range(self) -> tuple[float, float]:
            """The (min, max) the scale is computed from, after clipping by ``method``."""
            low, high = float(self.min_val), float(self.max_val)
            if not math.isfinite(low) or self.histogram.counts.size == 0 or self.method == "minmax":
                return low, high
            if self.symmetric:
                levels = (self.quant_max - self.quant_min) / 2
                return _clipped_symmetric_range(self.histogram, self.method, self.percentile, low, high, levels)
            steps = self.quant_max - self.quant_min
            return _clipped_affine_range(self.histogram, self.method, self.percentile, low, high, steps)

        def calculate_qparams(self):
            low, high = self.chosen_range()
            return self._calculate_qparams(torch.tensor(low), torch.tensor(high))

        def extra_repr(self) -> str:
            return f"method={self.method}, min_val={float(self.min_val):.4g}, max_val={float(self.max_val):.4g}"

    return RangeHistogramObserver


def _clipped_symmetric_range(hist: "_GridHistogram", method: str, percentile: float, low: float, high: float,
                             levels: float) -> tuple[float, float]:
    """Symmetric schemes: the clipping magnitude ``method`` picks from the |x| histogram, applied to the
    observed [low, high] (never wider than it)."""
    limit = max(abs(low), abs(high))
    if method == "percentile":
        amax = hist.quantile(percentile / 100.0)
    elif method == "entropy":
        amax = entropy_threshold(hist.magnitude_counts(), hist.width, 128)
    else:
        amax = mse_threshold_symmetric(hist, levels)
    amax = min(max(amax, 1e-12), limit)
    return max(low, -amax), min(high, amax)


def _clipped_affine_range(hist: "_GridHistogram", method: str, percentile: float, low: float, high: float,
                          steps: int) -> tuple[float, float]:
    """Asymmetric schemes: the [min, max] ``method`` picks from the histogram of x, widened to hold 0."""
    if method == "percentile":
        tail = 1.0 - percentile / 100.0
        chosen = (hist.quantile(tail) if low < 0 else low, hist.quantile(1.0 - tail) if high > 0 else high)
    elif method == "entropy":
        if low >= 0:  # one-sided (after a ReLU): all 256 levels on [0, max]
            chosen = (low, entropy_threshold(hist.magnitude_counts(), hist.width, steps + 1))
        else:
            amax = entropy_threshold(hist.magnitude_counts(), hist.width, 128)
            chosen = (max(low, -amax), min(high, amax))
    else:
        chosen = mse_range_affine(hist, steps, low, high)
    return min(chosen[0], 0.0) if low <= 0 else chosen[0], max(chosen[1], 0.0) if high >= 0 else chosen[1]


class _GridHistogram:
    """Counts on a grid of bins [(lo + k) * width, (lo + k + 1) * width); exact under widening.

    Exact zeros are counted in ``zeros`` (and also in their bin, so quantiles stay right).
    """

    def __init__(self, bins: int) -> None:
        self.target_bins = bins
        self.width = 0.0
        self.lo = 0
        self.counts = np.zeros(0, dtype=np.float64)
        self.zeros = 0.0
        self.total = 0.0
        self._pending_zeros = 0.0

    def add(self, values: torch.Tensor, low: float | None = None, high: float | None = None) -> None:
        """Count ``values``; ``low``/``high`` are their min and max when the caller knows them already."""
        values = values.reshape(-1)
        if low is None or high is None:
            low, high = (float(v) for v in torch.aminmax(values))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise UserError("an activation holds inf or NaN during calibration; the model or its input is broken")
        zeros = float(values.numel() - torch.count_nonzero(values))
        self.zeros += zeros
        self.total += values.numel()
        if self.width == 0.0:
            span = max(abs(low), abs(high))
            if span == 0.0:  # all zeros so far: no scale to set the bin width from yet
                self._pending_zeros += zeros
                return
            self.width = span / self.target_bins
            self.lo = math.floor(low / self.width)
            self.counts = np.zeros(math.floor(high / self.width) - self.lo + 1, dtype=np.float64)
        self._ensure(math.floor(low / self.width), math.floor(high / self.width))
        # histc on the grid's own edges: one pass, no int64 index tensor.
        bins = self.counts.size
        self.counts += torch.histc(values, bins=bins, min=self.lo * self.width, max=(self.lo + bins) * self.width).double().numpy()
        if self._pending_zeros:
            self._ensure(0, 0)
            self.counts[-self.lo] += self._pending_zeros
            self._pending_zeros = 0.0

    def _ensure(self, new_lo: int, new_hi: int) -> None:
        hi = self.lo + self.counts.size - 1
        lo, hi = min(self.lo, new_lo), max(hi, new_hi)
        while hi - lo + 1 > 2 * self.target_bins:  # too fine for the span: merge pairs of bins
            self._merge_pairs()
            new_lo, new_hi = math.floor(new_lo / 2), math.floor(new_hi / 2)
            hi = self.lo + self.counts.size - 1
            lo, hi = min(self.lo, new_lo), max(hi, new_hi)
        if lo < self.lo or hi > self.lo + self.counts.size - 1:
            grown = np.zeros(hi - lo + 1, dtype=np.float64)
            grown[self.lo - lo : self.lo - lo + self.counts.size] = self.counts
            self.counts, self.lo = grown, lo

    def _merge_pairs(self) -> None:
        # Bin k (global index lo + k) goes to global index floor((lo + k) / 2).
        if self.lo % 2:
            self.counts = np.concatenate([[0.0], self.counts])
            self.lo -= 1
        if self.counts.size % 2:
            self.counts = np.concatenate([self.counts, [0.0]])
        self.counts = self.counts.reshape(-1, 2).sum(1)
        self.lo //= 2
        self.width *= 2

    @property
    def edges(self) -> np.ndarray:
        return (self.lo + np.arange(self.counts.size + 1)) * self.width

    @property
    def centers(self) -> np.ndarray:
        return (self.lo + np.arange(self.counts.size) + 0.5) * self.width

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of the counts lie (linear within a bin)."""
        cumulative = np.cumsum(self.counts)
        target = q * cumulative[-1]
        k = int(np.searchsorted(cumulative, target, side="left"))
        k = min(k, self.counts.size - 1)
        before = cumulative[k - 1] if k else 0.0
        inside = (target - before) / self.counts[k] if self.counts[k] else 1.0
        return float((self.lo + k + min(max(inside, 0.0), 1.0)) * self.width)

    def magnitude_counts(self, skip_zeros: bool = True) -> np.ndarray:
        """Counts of |x| from bin 0 upwards; ``skip_zeros`` drops exact zeros from bin 0 (a ReLU's
        zeros are on every grid, and as a spike in bin 0 they would dominate a KL comparison)."""
        counts = self.folded_magnitude().counts if self.lo < 0 else np.concatenate([np.zeros(self.lo), self.counts])
        if skip_zeros and self.zeros:
            counts = counts.copy()
            counts[0] = max(counts[0] - self.zeros, 0.0)
        return counts

    def folded_magnitude(self) -> "_GridHistogram":
        """The histogram of |x| (bins are aligned on 0, so folding is exact)."""
        folded = _GridHistogram(self.target_bins)
        folded.width = self.width
        folded.lo = 0
        global_index = self.lo + np.arange(self.counts.size)
        magnitude_index = np.where(global_index >= 0, global_index, -global_index - 1)
        folded.counts = np.bincount(magnitude_index, weights=self.counts, minlength=int(magnitude_index.max()) + 1)
        folded.zeros, folded.total = self.zeros, self.total
        return folded


def entropy_threshold(counts: np.ndarray, width: float, levels: int, max_candidates: int = 512) -> float:
    """TensorRT's KL-divergence calibration on a histogram of |x| starting at 0.

    For each candidate threshold (a bin edge), the reference distribution P is the histogram up to it
    with the clipped tail added to the last bin; Q is P merged into ``levels`` quantization bins and
    spread back over the non-empty bins. The threshold with the smallest KL(P || Q) wins.
    """
    counts = np.asarray(counts, dtype=np.float64)
    nbins = counts.size
    if nbins <= levels:
        return nbins * width
    candidates = np.arange(levels, nbins + 1)
    if candidates.size > max_candidates:
        candidates = np.unique(np.linspace(levels, nbins, max_candidates).round().astype(int))
    tail = np.cumsum(counts[::-1])[::-1]  # tail[i] = sum(counts[i:])
    best_kl, best_i = math.inf, nbins
    for i in candidates:
        reference = counts[:i].copy()
        if i < nbins:
            reference[i - 1] += tail[i]
        nonzero = counts[:i] != 0
        # Merge the i bins into `levels` groups and spread each group's mass over its non-empty bins.
        group = (np.arange(i) * levels) // i
        group_mass = np.bincount(group, weights=counts[:i], minlength=levels)
        group_nonzero = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        expanded = np.where(nonzero, group_mass[group] / np.maximum(group_nonzero[group], 1), 0.0)
        p_sum, q_sum = reference.sum(), expanded.sum()
        if q_sum == 0 or p_sum == 0:
            continue
        p = reference / p_sum
        q = expanded / q_sum
        mask = p > 0
        if np.any(q[mask] == 0):
            kl = math.inf
        else:
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def _rounding_and_clipping_error(hist: _GridHistogram, low: float, highs: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Expected squared error of quantizing the histogram's values onto [low, highs[j]] with
    ``step[j]``: uniform rounding noise inside the range, squared distance to the edge outside it."""
    centers, counts = hist.centers, hist.counts.copy()
    if hist.zeros and hist.lo <= 0 < hist.lo + counts.size:
        counts[-hist.lo] = max(counts[-hist.lo] - hist.zeros, 0.0)  # exact zeros are on the grid
    above = np.clip(centers[None, :] - highs[:, None], 0, None)
    below = np.clip(low - centers, 0, None)[None, :]
    inside = (above == 0) & (below == 0)
    rounding = (counts[None, :] * inside).sum(1) * step**2 / 12.0
    clipping = (counts[None, :] * (above**2 + below**2)).sum(1)
    return rounding + clipping


def mse_threshold_symmetric(hist: _GridHistogram, levels: float, candidates: int = 200) -> float:
    """The amax minimising the expected squared error of |x| on a symmetric grid [-amax, amax] of
    2 * ``levels`` steps."""
    amax = hist.edges[-1] * np.linspace(1.0 / candidates, 1.0, candidates)
    error = _rounding_and_clipping_error(hist, 0.0, amax, amax / levels)
    return float(amax[int(np.argmin(error))])


def mse_range_affine(hist: _GridHistogram, steps: int, low: float, high: float, candidates: int = 48) -> tuple[float, float]:
    """The [low', high'] minimising the expected squared error on an asymmetric grid of ``steps``."""
    fractions = np.linspace(1.0 / candidates, 1.0, candidates)
    lows = np.array([min(low, 0.0)]) if low >= 0 else low * fractions
    highs = np.array([max(high, 0.0)]) if high <= 0 else high * fractions
    best = (math.inf, low, high)
    for candidate_low in lows:
        step = np.maximum(highs - candidate_low, 1e-12) / steps
        error = _rounding_and_clipping_error(hist, float(candidate_low), highs, step)
        j = int(np.argmin(error))
        if error[j] < best[0]:
            best = (float(error[j]), float(candidate_low), float(highs[j]))
    return best[1], best[2]


def qat_weight_observer():
    """For QAT: the current per-channel range of the weights at every step (they change as they train)."""
    from torchao.quantization.pt2e import MovingAveragePerChannelMinMaxObserver

    return MovingAveragePerChannelMinMaxObserver.with_args(
        averaging_constant=1.0, dtype=torch.int8, qscheme=torch.per_channel_symmetric, ch_axis=0, quant_min=-127, quant_max=127
    )


QAT_TRACKING_CONSTANT = 0.01


def qat_activation_observer(method: str, scheme, percentile: float = DEFAULT_PERCENTILE):
    """For QAT: an observer that is calibrated like PTQ, then tracks a moving average of batch ranges."""
    check_method(method, percentile)
    return calibrated_tracking_observer_class().with_args(
        method=method,
        percentile=percentile,
        averaging_constant=QAT_TRACKING_CONSTANT,
        dtype=scheme.activation_dtype,
        qscheme=scheme.activation_qscheme,
        quant_min=scheme.activation_range[0],
        quant_max=scheme.activation_range[1],
    )


_TRACKING_CLASS = None


def calibrated_tracking_observer_class():
    global _TRACKING_CLASS
    if _TRACKING_CLASS is None:
        from torchao.quantization.pt2e import MovingAverageMinMaxObserver

        class CalibratedTrackingObserver(MovingAverageMinMaxObserver):
            """Phase 1 (calibration): also fills a histogram; ``finish_calibration`` sets the range
            chosen by ``method`` from it. Phase 2 (fine-tuning): a moving average of batch min/max
            starting from that range (cheap enough to run at every training step)."""

            def __init__(self, method: str = DEFAULT_METHOD, percentile: float = DEFAULT_PERCENTILE, **kwargs):
                kwargs.pop("is_dynamic", None)
                super().__init__(**kwargs)
                self.method = method
                histogram_kwargs = {k: v for k, v in kwargs.items() if k in ("dtype", "qscheme", "quant_min", "quant_max")}
                # Not a submodule: the histogram is calibration-time state, not part of the model.
                self.__dict__["_histogram"] = histogram_observer_class()(method=method, percentile=percentile, **histogram_kwargs)
                self.calibrating = True

            def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
                if self.calibrating and self.method != "ema":
                    self._histogram(x_orig)
                return super().forward(x_orig)

            def finish_calibration(self) -> None:
                histogram = self.__dict__.get("_histogram")
                if self.calibrating and histogram is not None and self.method != "ema" and math.isfinite(float(histogram.min_val)):
                    low, high = histogram.chosen_range()
                    self.min_val.fill_(low)
                    self.max_val.fill_(high)
                self.calibrating = False
                self.__dict__["_histogram"] = None

        _TRACKING_CLASS = CalibratedTrackingObserver
    return _TRACKING_CLASS
