"""The seed's LR schedule: exact values for its constants."""

from __future__ import annotations

import pytest

from flower_exp.schedule import LRSchedule, plot_schedule

# The seed: lr_min 1e-4 in the first 4 epochs' ramp, lr_max 8e-4 in epochs 5-10 (1-based),
# then (max - min) * decay ** (epoch - 10) + min.
SEED = LRSchedule(lr_min=1e-4, lr_max=8e-4, rampup_epochs=4, sustain_epochs=6, decay=0.8)


def test_seed_constants_exact_values():
    expected = [1e-4, 2.75e-4, 4.5e-4, 6.25e-4] + [8e-4] * 6 + [8e-4, 6.6e-4, 5.48e-4, 4.584e-4]
    assert SEED.values(14) == pytest.approx(expected, rel=1e-12)
    assert SEED.lr(60) == pytest.approx(1e-4 + 7e-4 * 0.8**50)


def test_replica_scaling_only_scales_the_peak():
    assert SEED.lr(0, replicas=8) == pytest.approx(1e-4)
    assert SEED.lr(5, replicas=8) == pytest.approx(6.4e-3)
    assert SEED.lr(11, replicas=8) == pytest.approx((6.4e-3 - 1e-4) * 0.8 + 1e-4)
    unscaled = LRSchedule(lr_min=1e-4, lr_max=8e-4, scale_by_replicas=False)
    assert unscaled.lr(5, replicas=8) == pytest.approx(8e-4)


def test_lr_start_and_no_rampup():
    sched = LRSchedule(lr_min=1e-5, lr_max=5e-5, lr_start=1e-5, rampup_epochs=5, sustain_epochs=0, decay=0.8)
    assert sched.values(7) == pytest.approx([1e-5, 1.8e-5, 2.6e-5, 3.4e-5, 4.2e-5, 5e-5, 4.2e-5])
    flat = LRSchedule(lr_min=1e-4, lr_max=1e-3, rampup_epochs=0, sustain_epochs=2, decay=0.5)
    assert flat.values(4) == pytest.approx([1e-3, 1e-3, 1e-3, 5.5e-4])


def test_random_rampup_is_seeded_and_bounded():
    a = LRSchedule(random_rampup=True, seed=3)
    b = LRSchedule(random_rampup=True, seed=3)
    c = LRSchedule(random_rampup=True, seed=4)
    assert a.values(4) == b.values(4)
    assert a.values(4) != c.values(4)
    assert all(0 <= v < a.lr_min for v in a.values(4))
    assert a.values(12)[4:] == SEED.values(12)[4:]


@pytest.mark.parametrize(
    "kwargs", [dict(lr_min=0), dict(lr_max=-1), dict(decay=0), dict(decay=1.5), dict(rampup_epochs=-1), dict(lr_start=0)]
)
def test_invalid_constants(kwargs):
    with pytest.raises(ValueError):
        LRSchedule(**kwargs)


def test_plot_writes_png(tmp_path):
    path = tmp_path / "lr.png"
    plot_schedule(SEED, 20, str(path), replicas=2)
    assert path.read_bytes().startswith(b"\x89PNG")
