import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgecache.projection_fit import pair_loss  # noqa: E402


def unit_rows(x: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(x, dtype=torch.float32), dim=-1)


def test_pair_loss_rewards_near_duplicates_and_far_others():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 16))
    label = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    scale, bias = torch.tensor(20.0), torch.tensor(-16.0)
    # Duplicates next to their partner, non-duplicates elsewhere: the loss should be low.
    dup = label.numpy()[:, None] > 0.5
    good_b = np.where(dup, a + 0.05 * rng.normal(size=a.shape), rng.normal(size=a.shape))
    # The reverse: duplicates far apart, non-duplicates identical.
    bad_b = np.where(dup, rng.normal(size=a.shape), a)
    good = pair_loss(unit_rows(a), unit_rows(good_b), label, scale, bias)
    bad = pair_loss(unit_rows(a), unit_rows(bad_b), label, scale, bias)
    assert good.item() < 0.5 < bad.item()


def test_pair_loss_infonce_needs_two_duplicates():
    a = unit_rows(np.eye(4)[:3])
    label = torch.tensor([1.0, 0.0, 0.0])
    scale, bias = torch.tensor(20.0), torch.tensor(-16.0)
    # One duplicate: no in-batch contrast, so the weight of InfoNCE changes nothing.
    assert pair_loss(a, a, label, scale, bias, infonce_weight=0.0).item() == pytest.approx(
        pair_loss(a, a, label, scale, bias, infonce_weight=5.0).item()
    )
