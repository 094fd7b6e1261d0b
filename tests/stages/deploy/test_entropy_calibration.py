"""The entropy search must choose exactly what ONNX Runtime's own chooses: its divergences and
thresholds are compared with ONNX Runtime's on real activations and on awkward histograms."""

import numpy as np
import pytest
import torch
from onnxruntime.quantization.calibrate import HistogramCollector

from stages.deploy.entropy_calibration import divergences, entropy_threshold, use_fast_entropy


def collected(arrays: list[dict[str, np.ndarray]], num_bins: int) -> HistogramCollector:
    collector = HistogramCollector("entropy", False, num_bins, 128, 99.999, "same")
    for batch in arrays:  # later batches with wider ranges grow the histogram, as in calibration
        collector.collect({name: [values] for name, values in batch.items()})
    return collector


def onnx_runtime_divergences(collector, histogram, monkeypatch) -> np.ndarray:
    """The divergences ONNX Runtime's search computed: the array it takes the argmin of."""
    seen = []
    argmin = np.argmin

    def recording(values, *args, **kwargs):
        seen.append(np.array(values))
        return argmin(values, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(np, "argmin", recording)
        threshold = collector.get_entropy_threshold(histogram, 128)
    return seen[-1], threshold


AWKWARD = {
    "normal": lambda rng: rng.standard_normal(5000),
    "one-sided with outliers": lambda rng: np.concatenate([rng.exponential(1.0, 5000), [80.0, -3.0]]),
    "sparse": lambda rng: np.where(rng.random(3000) < 0.9, 0.0, rng.standard_normal(3000) * 4),
    "a few values": lambda rng: rng.integers(-3, 4, 2000).astype(float),
    "constant": lambda rng: np.full(500, 0.0),
}


@pytest.mark.parametrize("kind,num_bins", [(kind, 256) for kind in AWKWARD] + [("normal", 2048)])
def test_every_divergence_and_the_threshold_are_onnx_runtimes(kind, num_bins, monkeypatch):
    rng = np.random.default_rng(num_bins)
    first = AWKWARD[kind](rng).astype(np.float32)
    batches = [{"t": first}, {"t": first * 1.3}]  # the second batch widens the range: more bins
    collector = collected(batches, num_bins)
    histogram = collector.histogram_dict["t"]
    expected_kl, expected = onnx_runtime_divergences(collector, histogram, monkeypatch)
    np.testing.assert_array_equal(divergences(histogram[0], 128), expected_kl)
    low, high = entropy_threshold(histogram, 128)
    assert (low, high) == expected and low.dtype == expected[0].dtype and high.dtype == expected[1].dtype


def test_real_activations_get_onnx_runtimes_ranges_and_float_histograms_keep_its_own_search(tmp_path):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from stages.export import export_onnx
    from stages.nets.architectures import build_model
    from stages.quantize import ArrayReader

    torch.manual_seed(0)
    export_onnx(build_model("resnet8", num_classes=10, in_channels=3), torch.randn(2, 3, 16, 16),
                tmp_path / "model.onnx", opset=18)
    images = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    images[16:] *= 1.5  # the second batch widens every range
    ranges = []
    for fast in (False, True):
        calibrator = create_calibrator(tmp_path / "model.onnx", None, augmented_model_path=str(tmp_path / "aug.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": 256, "num_quantized_bins": 128})
        calibrator.collect_data(ArrayReader("images", images, batch_size=16))
        if fast:
            use_fast_entropy(calibrator.collector)
        ranges.append({name: tuple(float(v) for v in value.range_value)
                       for name, value in calibrator.compute_data().data.items()})
    assert len(ranges[0]) > 10 and ranges[1] == ranges[0]

    collector = collected([{"t": np.linspace(-1, 1, 100, dtype=np.float32)}], 256)
    hist, *rest = collector.histogram_dict["t"]
    weighted = (hist.astype(np.float64) * 0.5, *rest)  # not counts: ONNX Runtime's search, untouched
    own = collector.get_entropy_threshold(weighted, 128)
    use_fast_entropy(collector)
    assert collector.get_entropy_threshold(weighted, 128) == own
