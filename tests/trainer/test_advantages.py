"""Group advantages vs per-group Python loops; zero-variance groups; bad input."""
import statistics

import pytest
import torch

from onpolicy.trainer.advantages import group_advantages, group_reward_stats, zero_variance_groups


def _loop_reference(rewards, g, algo, eps=1e-4):
    out = []
    for i in range(0, len(rewards), g):
        grp = rewards[i:i + g]
        mean = sum(grp) / g
        for j, r in enumerate(grp):
            if algo in ("grpo", "dapo"):
                out.append((r - mean) / (statistics.stdev(grp) + eps))
            elif algo == "dr_grpo":
                out.append(r - mean)
            else:
                out.append(r - (sum(grp) - r) / (g - 1))
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("algo", ["grpo", "dapo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("g", [2, 4, 8])
def test_matches_loop(algo, g):
    gen = torch.Generator().manual_seed(g)
    rewards = torch.rand(3 * g, generator=gen).tolist()
    got = group_advantages(torch.tensor(rewards), g, algo)
    torch.testing.assert_close(got, _loop_reference(rewards, g, algo), atol=1e-5, rtol=1e-5)
    # [N, G] input gives the same result as flat input.
    assert torch.equal(got, group_advantages(torch.tensor(rewards).view(3, g), g, algo))


def test_groups_are_independent_and_zero_mean():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 6.0])
    adv = group_advantages(r, 4, "grpo")
    assert adv.view(2, 4).sum(1).abs().max() < 1e-5
    assert adv[0] > 0 and adv[1] < 0 and adv[7] > 0 and adv[4] < 0
    # Shifting one group's rewards leaves every advantage unchanged (per-group baseline).
    r2 = r.clone()
    r2[4:] += 100.0
    torch.testing.assert_close(group_advantages(r2, 4, "grpo"), adv)


def test_zero_variance_group_gives_zero_advantage():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    for algo in ("grpo", "dr_grpo", "rloo", "dapo"):
        adv = group_advantages(r, 3, algo)
        assert torch.equal(adv[:3], torch.zeros(3)), algo
        assert adv[3:].abs().sum() > 0
    assert zero_variance_groups(r, 3).tolist() == [True, False]


def test_rloo_is_scaled_mean_baseline():
    r = torch.tensor([0.0, 1.0, 1.0, 0.5])
    g = 4
    torch.testing.assert_close(group_advantages(r, g, "rloo"), group_advantages(r, g, "dr_grpo") * g / (g - 1))


def test_reward_stats():
    s = group_reward_stats(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2)
    assert s["reward/mean"] == 0.75
    assert s["reward/zero_std_frac"] == 0.5
    assert abs(s["reward/std"] - torch.tensor([1.0, 1.0, 0.0, 1.0]).std(unbiased=False).item()) < 1e-7


def test_bad_input():
    with pytest.raises(ValueError, match="algo must be one of"):
        group_advantages(torch.zeros(4), 2, "ppo")
    with pytest.raises(ValueError, match="divisible by group_size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="rloo"):
        group_advantages(torch.zeros(4), 1, "rloo")
