"""INT8 static quantization keeps the model's card, marks it, and stays close to the FP32 model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model_factory import ModelFactory, part_image
from qcstation.inspect import Detector
from qcstation.inspect.card import ModelCard
from qcstation.inspect.quantize import quantize_model

# Tolerance on the class probabilities (Softmax stays float; the conv's input and output are uint8, the
# weights int8 per channel). Measured: max |Δp| 0.0023, mean 2.5e-5 on these frames; the bounds leave
# about 4x room for another onnxruntime build's rounding.
TOLERANCE_MAX = 0.01
TOLERANCE_MEAN = 1e-4


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    frames = []
    for _ in range(n):
        x, y = (int(v) for v in rng.integers(16, 112, size=2))
        frames.append(part_image((128, 128), blobs=((x, y, int(rng.integers(4, 12))),)))
    return frames


def test_quantized_model_loads_with_its_card_and_provenance(
    make_model: ModelFactory, tmp_path: Path, card_of: Callable[[Path], ModelCard]
) -> None:
    # given a tiny FP32 model and calibration frames
    fp32 = make_model("fp32.onnx", hidden=4)
    # when it is quantized
    result = quantize_model(fp32, tmp_path / "int8.onnx", _frames(12), calibration_label="test frames")
    # then the result loads as a station model with the same card, marked as quantized
    det = Detector.from_path(result.path)
    before, after = card_of(fp32), card_of(result.path)
    assert det.card == after
    assert (after.name, after.version, after.classes, after.input, after.output, after.thresholds) == (
        before.name,
        before.version,
        before.classes,
        before.input,
        before.output,
        before.thresholds,
    )
    q = after.provenance["quantization"]
    assert q["format"] == "QDQ"
    assert q["weights"] == "int8 (7-bit range), per-channel"
    assert q["calibration"] == {"method": "MinMax", "frames": 12, "data": "test frames"}
    assert q["from_sha256"] == Detector.from_path(fp32).info.sha256
    assert after.provenance["dataset"] == before.provenance["dataset"]
    assert result.frames == 12
    assert det.info.sha256 == result.sha256


def test_quantized_outputs_are_close_to_fp32(make_model: ModelFactory, tmp_path: Path) -> None:
    # given a tiny model and its INT8 copy calibrated on part frames
    fp32 = Detector.from_path(make_model("fp32.onnx", hidden=4))
    int8 = Detector.from_path(quantize_model(fp32.path, tmp_path / "int8.onnx", _frames(12)).path)
    # when both see frames they were not calibrated on
    for frame in _frames(16)[12:]:
        p32, _, _ = fp32.predict(frame)
        p8, _, _ = int8.predict(frame)
        diff = np.abs(p32 - p8)
        # then the probability maps agree within the stated tolerance, and so do the verdicts
        assert float(diff.max()) <= TOLERANCE_MAX
        assert float(diff.mean()) <= TOLERANCE_MEAN
        assert [r.class_name for r in fp32.inspect(frame).regions] == [
            r.class_name for r in int8.inspect(frame).regions
        ]


def test_the_convolution_that_reads_the_image_stays_fp32_and_the_rest_is_int8(
    make_model: ModelFactory, tmp_path: Path
) -> None:
    import onnx

    # given a model whose first convolution reads the 1-channel image and whose second reads 4 channels
    fp32 = make_model("fp32.onnx", hidden=4)
    # when it is quantized with the default, and with every convolution in int8
    default = quantize_model(fp32, tmp_path / "default.onnx", _frames(12))
    every = quantize_model(fp32, tmp_path / "every.onnx", _frames(12), float_image_convs=False)

    def weight_types(path: Path) -> dict[str, int]:
        graph = onnx.load(str(path)).graph
        inits = {t.name: t.data_type for t in graph.initializer}
        # a quantized weight reaches its Conv through a DequantizeLinear of an int8 initializer
        dq = {n.output[0]: inits.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"}
        return {n.name: dq.get(n.input[1], inits.get(n.input[1])) for n in graph.node if n.op_type == "Conv"}

    # then the default keeps the image-reading convolution in float weights and quantizes the other
    types = weight_types(default.path)
    assert types["stem"] == onnx.TensorProto.FLOAT
    assert [t for name, t in types.items() if name != "stem"] == [onnx.TensorProto.INT8]
    assert default.card.provenance["quantization"]["kept_fp32"] == ["stem"]
    assert set(weight_types(every.path).values()) == {onnx.TensorProto.INT8}
    assert every.card.provenance["quantization"]["kept_fp32"] == []
    # and both still find what the FP32 model finds
    frame = _frames(13)[12]
    want = [r.class_name for r in Detector.from_path(fp32).inspect(frame).regions]
    assert want
    for q in (default, every):
        assert [r.class_name for r in Detector.from_path(q.path).inspect(frame).regions] == want


def test_weights_use_seven_bits_so_cpus_without_vnni_do_not_saturate(
    make_model: ModelFactory, tmp_path: Path
) -> None:
    import onnx
    from onnx import numpy_helper

    # given a model quantized with the default and one with full-range weights
    fp32 = make_model("fp32.onnx", gain=60.0, hidden=4)
    seven = quantize_model(fp32, tmp_path / "seven.onnx", _frames(12))
    full = quantize_model(fp32, tmp_path / "full.onnx", _frames(12), reduce_range=False)

    def int8_weights(path: Path) -> np.ndarray:
        inits = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
        return np.concatenate([w.ravel() for w in inits if w.dtype == np.int8 and w.size > 1])

    # then the default's int8 weights stay within 7 bits, where the full-range ones reach 127
    assert np.abs(int8_weights(seven.path).astype(int)).max() <= 64
    assert np.abs(int8_weights(full.path).astype(int)).max() == 127
    assert Detector.from_path(full.path).card.provenance["quantization"]["weights"] == "int8, per-channel"


def test_a_full_range_int8_model_warns_where_the_cpu_has_avx2_without_vnni(
    make_model: ModelFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qcstation.inspect import detector as detector_module
    from qcstation.inspect.detector import int8_saturation_risk

    # given an FP32 model, its INT8 copy with full-range weights (as made before 7 bits became the default)
    # and one with the default 7-bit weights
    fp32 = make_model("fp32.onnx", hidden=4)
    full = quantize_model(fp32, tmp_path / "full.onnx", _frames(12), reduce_range=False)
    seven = quantize_model(fp32, tmp_path / "seven.onnx", _frames(12))
    avx2 = frozenset({"sse4_2", "fma", "avx2"})
    vnni = avx2 | {"avx512f", "avx512_vnni"}

    # then only full-range weights on an AVX2 CPU without VNNI are a risk
    risk = int8_saturation_risk(full.card, avx2)
    assert risk is not None and "qcstation export --int8" in risk
    assert int8_saturation_risk(full.card, vnni) is None
    assert int8_saturation_risk(full.card, avx2 | {"avx_vnni"}) is None
    assert int8_saturation_risk(full.card, None) is None  # not an x86 Linux: nothing known
    assert int8_saturation_risk(seven.card, avx2) is None
    assert int8_saturation_risk(Detector.from_path(fp32).card, avx2) is None

    # and the detector says so when it loads on such a CPU, for that model only
    monkeypatch.setattr(detector_module, "cpu_flags", lambda: avx2)
    with caplog.at_level(logging.WARNING, logger="qcstation.inspect.detector"):
        Detector.from_path(full.path)
        Detector.from_path(seven.path)
    warned = [r.getMessage() for r in caplog.records if "full-range int8 weights" in r.getMessage()]
    assert len(warned) == 1 and "full.onnx" in warned[0]
