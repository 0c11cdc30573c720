"""The Trainer's parts: the strategy is chosen from the launcher's environment; full fine-tuning selects every
parameter; a rollout source's per-token `loss_mask` makes the other tokens context only (not scored: not in the
sampler's or the trainer's logprobs, the loss or the parity metrics); a Trainer runs its
update on hand-made rollouts with a fake sampler and a fake loss (no engine), on-policy bitwise."""
import torch

from onpolicy.config import ExperimentConfig
from onpolicy.model import sequence_logprobs
from onpolicy.model.tiny import build_tiny
from onpolicy.rewards import register_reward
from onpolicy.trainer import FSDP2, FullFineTuning, Replicated, Trainer, TrainerParts, score_rollouts
from onpolicy.trainer.distributed import Dist
from onpolicy.trainer.losses import slice_loss
from onpolicy.trainer.parallel import choose_strategy
from onpolicy.trainer.rollout import Rollout, merge_rollouts, sub_rollout

PROMPTS = [[5, 9, 12], [5, 9, 12], [7, 8, 20], [7, 8, 20]]
COMPLETIONS = [[30, 31, 32], [40, 41], [50, 51, 52, 53], [60]]


@register_reward("test_parts_length")
def _length(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def _cfg(tmp_path, **trainer) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "model": {"path": "tiny", "device": "cpu"}, "sampling": {"num_generations": 2, "max_tokens": 4},
        "trainer": {"prompts_per_step": 2, "lr": 1e-2, **trainer}, "rewards": [{"name": "test_parts_length"}],
        "logging": {"output_dir": str(tmp_path / "run"), "report_to": []}})


def _model():
    model, _ = build_tiny(seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
                          num_key_value_heads=1, head_dim=64)
    return model


def _rollout(model, loss_mask=()) -> Rollout:
    """The sampler's logprobs computed by the same model and kernels (as the engine computes them)."""
    with torch.no_grad():
        lps = [x.float() for x in sequence_logprobs(model, PROMPTS, COMPLETIONS, score_masks=list(loss_mask) or None)]
    return Rollout(group_size=2, prompt_ids=PROMPTS, completion_ids=COMPLETIONS, sampler_logprobs=lps,
                   texts=["abc", "de", "fghi", "j"], finish_reasons=["stop"] * 4, group_index=[0, 0, 1, 1],
                   loss_mask=list(loss_mask))


def test_strategy_is_chosen_from_the_accelerate_environment():
    dist = Dist(rank=0, world_size=2)
    assert type(choose_strategy(dist, {"ACCELERATE_USE_FSDP": "true"})) is FSDP2
    assert type(choose_strategy(dist, {})) is Replicated
    assert choose_strategy(dist, {}).dist is dist and not Replicated().shards_masters and FSDP2(dist).shards_masters


def test_full_fine_tuning_selects_every_parameter_in_order():
    model = _model()
    assert [n for n, _ in FullFineTuning().select(model)] == [n for n, _ in model.named_parameters()]


class _FakeSampler:
    def __init__(self):
        self.resets = 0

    def reset_prefix_cache(self):
        self.resets += 1


def test_rollout_loss_mask_keeps_environment_tokens_out_of_the_loss(tmp_path):
    cfg = _cfg(tmp_path)
    rows = [{"prompt": "p0"}, {"prompt": "p1"}]
    env_tokens = [torch.tensor([True, False, True]), torch.tensor([True, True]), torch.tensor([False] * 4),
                  torch.tensor([True])]
    model = _model()
    ro = _rollout(model, env_tokens)
    assert ro.seq_lens == [2, 2, 0, 1] and [len(x) for x in ro.sampler_logprobs] == ro.seq_lens
    scored = score_rollouts(cfg, rows, ro)
    assert scored.loss_mask.shape == (5,) and bool(scored.loss_mask.all())  # the policy's tokens alone train
    assert bool(score_rollouts(cfg, rows, _rollout(model)).loss_mask.all())  # no mask: every token trains
    halves = [sub_rollout(ro, range(0, 2)), sub_rollout(ro, range(2, 4))]
    assert merge_rollouts(halves).loss_mask == ro.loss_mask and halves[1].loss_mask == env_tokens[2:]
    strategy = Replicated()
    optimizer = strategy.build_optimizer(model, FullFineTuning().select(model), cfg.trainer, torch.device("cpu"))
    trainer = Trainer(cfg, device=torch.device("cpu"), strategy=strategy, model=model, optimizer=optimizer,
                      sampler=_FakeSampler())
    m = trainer.update(scored, 0)  # strict: every policy token's ratio is exactly 1
    assert m["onpolicy/kl"] == 0.0 and m["onpolicy/mismatch_frac"] == 0.0 and m["grad_norm"] > 0


def test_trainer_update_with_fakes_is_on_policy_and_moves_the_weights(tmp_path):
    model = _model()
    cfg = _cfg(tmp_path, micro_batch_tokens=8)
    calls = []

    def loss(*a, **k):
        calls.append(k["check_on_policy"])
        return slice_loss(*a, **k)

    strategy, sampler = Replicated(), _FakeSampler()
    optimizer = strategy.build_optimizer(model, FullFineTuning().select(model), cfg.trainer, torch.device("cpu"))
    trainer = Trainer(cfg, device=torch.device("cpu"), strategy=strategy, model=model, optimizer=optimizer,
                      sampler=sampler, parts=TrainerParts(loss_fn=loss))
    before = [p.detach().clone() for p in model.parameters()]
    scored = score_rollouts(cfg, [{"prompt": "p0"}, {"prompt": "p1"}], _rollout(model))
    m = trainer.update(scored, 0)
    assert m["onpolicy/kl"] == 0.0 and m["onpolicy/mismatch_frac"] == 0.0 and m["grad_norm"] > 0
    assert len(calls) > 1 and all(calls)  # several micro-batches, each checked bitwise on-policy
    assert sampler.resets == 1
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
