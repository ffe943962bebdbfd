import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.sqnr import SQNRMeter, db_to_noise_ratio, noise_ratio_to_db, sqnr_db


def _signal(seed: int, shape=(4, 3, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_tensors_give_infinite_sqnr():
    x = _signal(0)
    assert sqnr_db(x, x.clone()) == math.inf


def test_known_ratio():
    x = torch.ones(100, dtype=torch.float64)
    y = x + 0.1  # noise power 0.01 per element, signal 1 -> 20 dB
    assert sqnr_db(x, y) == pytest.approx(20.0, abs=1e-9)


def test_zero_reference_and_non_finite_inputs_are_errors():
    with pytest.raises(BrevitasLDMError, match="zero reference"):
        sqnr_db(torch.zeros(3), torch.ones(3))
    with pytest.raises(BrevitasLDMError, match="NaN or Inf"):
        sqnr_db(torch.tensor([1.0, float("nan")]), torch.ones(2))
    with pytest.raises(BrevitasLDMError, match="NaN or Inf"):
        sqnr_db(torch.ones(2), torch.tensor([1.0, float("inf")]))
    with pytest.raises(BrevitasLDMError, match="same shape"):
        sqnr_db(torch.ones(2), torch.ones(3))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_sqnr_is_scale_invariant(seed, scale):
    x = _signal(seed)
    y = x + 0.05 * _signal(seed + 1)
    assert sqnr_db(x * scale, y * scale) == pytest.approx(sqnr_db(x, y), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), target_db=st.floats(0.0, 60.0))
def test_noise_of_known_power_gives_expected_db(seed, target_db):
    x = _signal(seed, (8, 4, 16, 16))
    noise = _signal(seed + 7, x.shape)
    # Scale the noise to exactly the power that gives target_db against this signal.
    noise = noise * (x.pow(2).sum() / noise.pow(2).sum() * 10 ** (-target_db / 10)).sqrt()
    assert sqnr_db(x, x + noise) == pytest.approx(target_db, abs=0.1)


def test_per_sample_and_meter_agree_with_direct_computation():
    x, y = _signal(1), _signal(1) + 0.1 * _signal(2)
    per_sample = sqnr_db(x, y, per_sample=True)
    assert per_sample.shape == (4,)
    for i in range(4):
        assert per_sample[i].item() == pytest.approx(sqnr_db(x[i], y[i]), abs=1e-9)
    meter = SQNRMeter()
    for a, b in zip(x.split(1), y.split(1)):  # streamed one sample at a time
        meter.update(a, b)
    assert meter.count == 4
    assert meter.pooled_db == pytest.approx(sqnr_db(x, y), abs=1e-9)
    assert meter.mean_db == pytest.approx(per_sample.mean().item(), abs=1e-9)
    merged = SQNRMeter().update(x[:2], y[:2]).merge(SQNRMeter().update(x[2:], y[2:]))
    assert merged.pooled_db == pytest.approx(meter.pooled_db, abs=1e-12)


def test_empty_meter_is_an_error_and_noise_ratio_round_trips():
    with pytest.raises(BrevitasLDMError, match="no samples"):
        SQNRMeter().pooled_db
    assert noise_ratio_to_db(db_to_noise_ratio(23.5)) == pytest.approx(23.5)
    assert noise_ratio_to_db(db_to_noise_ratio(math.inf)) == math.inf
