"""The reconstruction check: the coordinator's per-site view of a secure sum is blind."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.core.errors import DataError
from vigil.federation.secure_sum import SecureSumSettings, quantization_error
from vigil.federation.view_audit import Z_999, reconstruction_check, secure_view


def _correlated_sites(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Sites whose vectors share a common part (as real updates do) plus their own."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0.0, 0.2, d)
    return np.clip(common + rng.normal(0.0, 0.1, (n, d)), -0.9, 0.9)


def test_golden_values_of_the_check_on_a_small_case() -> None:
    true = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 0.0, 1.0]])
    total = true.sum(axis=0)  # [3, 5, 5, 7]; mean [1, 5/3, 5/3, 7/3]
    (a, b, c) = reconstruction_check(true, true, total)  # the plain protocol's view
    assert (a.correlation, a.relative_error) == (pytest.approx(1.0), 0.0)
    # golden values from scipy.stats.pearsonr: site a minus the mean, [0, 1/3, 4/3, 5/3],
    # against [1, 2, 3, 4]; the mean [1, 5/3, 5/3, 7/3] against [1, 2, 3, 4]
    assert a.correlation_beyond_sum == pytest.approx(0.9761870601839528, abs=1e-12)
    assert a.sum_correlation == pytest.approx(0.9486832980505139, abs=1e-12)
    assert a.bound == pytest.approx(Z_999 / 2.0)
    assert b.correlation == 0.0  # a constant vector correlates with nothing
    assert a.blind  # 4 elements: the bound is above 1, such a check cannot show a leak
    with pytest.raises(DataError, match=r"expected true and view of one shape"):
        reconstruction_check(true, true[:2], total)


@pytest.mark.parametrize("wide", [False, True])
def test_the_secure_view_gives_back_nothing_while_the_plain_one_gives_back_everything(
        wide: bool) -> None:
    true = _correlated_sites(4, 20_000)
    settings = SecureSumSettings()
    total, view = secure_view(true, settings, wide=wide)
    step = quantization_error(4, settings.widened(4) if wide else settings)
    np.testing.assert_allclose(total, true.sum(axis=0), atol=step)  # the sum is delivered
    secure = reconstruction_check(true, view, total)
    plain = reconstruction_check(true, true, total)
    for s, p in zip(secure, plain, strict=True):
        assert s.blind, s  # |r| within the 99.9 % bound of a view independent of the site
        assert s.relative_error > 1.0  # the decoded view is noise, not the vector
        assert p.correlation == pytest.approx(1.0) and p.relative_error == 0.0
        assert s.sum_correlation == p.sum_correlation > 0.8  # what the sum itself tells


def test_a_view_without_the_pairwise_masks_would_be_caught() -> None:
    # negative control: with two sites masking only against each other and a third not
    # masking at all, its "view" is its quantized vector and the check must say so
    from vigil.federation.secure_sum import quantize

    true = _correlated_sites(3, 5_000, seed=1)
    settings = SecureSumSettings()
    leaked = quantize(true[2], settings).astype(np.float64)
    view = np.vstack([np.zeros((2, true.shape[1])),
                      leaked * 2 * settings.clipping_range / settings.quantization_range
                      - settings.clipping_range])
    checked = reconstruction_check(true, view, true.sum(axis=0))
    assert not checked[2].blind and checked[2].correlation > 0.999
    assert checked[2].relative_error < 1e-5
