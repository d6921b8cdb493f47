import math

import pytest

from federated.privacy import epsilon, noise_for_epsilon, rdp_sampled_gaussian


def test_full_participation_rdp_is_gaussian_closed_form() -> None:
    rdp = rdp_sampled_gaussian(1.0, 2.0, orders=(2, 8))
    assert rdp.tolist() == pytest.approx([2 / 8, 8 / 8])


def test_subsampling_only_lowers_the_cost() -> None:
    full = epsilon(rounds=20, q=1.0, noise_multiplier=1.5, delta=1e-5)
    sampled = epsilon(rounds=20, q=0.1, noise_multiplier=1.5, delta=1e-5)
    assert 0 < sampled < full


def test_more_rounds_and_less_noise_cost_more() -> None:
    assert epsilon(rounds=40, q=1.0, noise_multiplier=3, delta=1e-3) > epsilon(rounds=20, q=1.0, noise_multiplier=3, delta=1e-3)
    assert epsilon(rounds=20, q=1.0, noise_multiplier=1, delta=1e-3) > epsilon(rounds=20, q=1.0, noise_multiplier=3, delta=1e-3)
    assert math.isinf(epsilon(rounds=1, q=1.0, noise_multiplier=0.0, delta=1e-3))


def test_calibrated_noise_meets_the_target() -> None:
    z = noise_for_epsilon(8.0, rounds=20, q=1.0, delta=1e-3)
    assert epsilon(rounds=20, q=1.0, noise_multiplier=z, delta=1e-3) <= 8.0
    assert epsilon(rounds=20, q=1.0, noise_multiplier=z - 0.01, delta=1e-3) > 8.0


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="delta"):
        epsilon(rounds=1, q=1.0, noise_multiplier=1.0, delta=2.0)
    with pytest.raises(ValueError, match="q"):
        rdp_sampled_gaussian(0.0, 1.0)
