"""The trainer's memory is bounded at long context: one optimizer update (`update_policy`, activation
checkpointing, a sequence longer than trainer.micro_batch_tokens trained alone) never makes a tensor that grows
with the square of the sequence length ([S, S] attention scores) or holds a [tokens, vocab] logits matrix, in
both kernel modes. Measured as the largest tensor any op returns (a TorchDispatchMode), at S and 2S tokens: linear
growth doubles it, an [S, S] score matrix quadruples it. The vocab is 3 logprob chunks wide, so a whole-vocab
logits tensor would be 3x the chunk the logprobs hold. CPU at 1k / 2k tokens; on the GPU (Triton kernels, flash
varlen for `invariant: false`) at 8k / 16k tokens in bf16, with the peak allocated memory too."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from onpolicy import kernels
from onpolicy.kernels.logprobs_triton import VOCAB_CHUNK
from onpolicy.model import CausalLM
from onpolicy.model.tiny import tiny_config
from onpolicy.trainer import Replicated
from onpolicy.trainer.advantages import group_advantages
from onpolicy.trainer.microbatch import oversized, plan_micro_batches
from onpolicy.trainer.rollout import Rollout
from onpolicy.trainer.scoring import ScoredBatch
from onpolicy.trainer.update import UpdateParts, update_policy

VOCAB = 3 * VOCAB_CHUNK + 100
MICRO_BATCH_TOKENS = 256
PROMPT = [5, 9, 12, 7]


class LargestTensor(TorchDispatchMode):
    """The largest numel of any tensor an op returns while active (forward, recompute, backward, optimizer)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.numel = max([self.numel] + sizes)
        return out


def _config(invariant: bool):
    from onpolicy.config import parse_args

    over = {"trainer.micro_batch_tokens": MICRO_BATCH_TOKENS, "trainer.activation_checkpointing": "true",
            "trainer.invariant": str(invariant).lower(), "trainer.prompts_per_step": 1,
            "sampling.num_generations": 2, "sampling.max_tokens": 16384, "trainer.strict_onpolicy": "false"}
    argv = ["--config", "configs/tiny-cpu.yaml"]
    for k, v in over.items():
        argv += [f"--{k}", str(v)]
    return parse_args(argv)


def _scored(long: int) -> ScoredBatch:
    """One group: a `long`-token completion and a short one."""
    gen = torch.Generator().manual_seed(long)
    ro = Rollout(group_size=2)
    for n in (long, 9):
        ro.prompt_ids.append(PROMPT)
        ro.completion_ids.append(torch.randint(4, VOCAB, (n,), generator=gen).tolist())
        ro.sampler_logprobs.append(torch.full((n,), -9.0))
        ro.texts.append("")
        ro.finish_reasons.append("length")
        ro.group_index.append(0)
    rewards = torch.tensor([1.0, 0.0])
    return ScoredBatch(rollout=ro, rewards=rewards, advantages=group_advantages(rewards, 2, "grpo"),
                       loss_mask=torch.ones(ro.num_tokens, dtype=torch.bool), truncated=torch.tensor([True, True]),
                       kept_groups=1, reward_by_name={})


def _largest_tensor(invariant: bool, long: int, device: str = "cpu") -> tuple[int, int]:
    """(largest tensor's numel, peak allocated bytes above the start: CUDA only, else 0) of one update."""
    cfg, device = _config(invariant), torch.device(device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    mc = tiny_config(vocab_size=VOCAB, num_hidden_layers=1, max_position_embeddings=1 << 15, dtype=dtype)
    model = CausalLM(mc).to(device)
    model.activation_checkpointing = True
    strategy = Replicated()
    opt = strategy.build_optimizer(model, list(model.named_parameters()), cfg.trainer, device)
    parts = UpdateParts(cfg=cfg, device=device, model=model, module=model, optimizer=opt, strategy=strategy)
    scored = _scored(long)
    seq_tokens = [len(PROMPT) + n for n in scored.rollout.seq_lens]
    assert oversized(seq_tokens, MICRO_BATCH_TOKENS) == [0]  # the long sequence gets a micro-batch of its own
    assert plan_micro_batches(seq_tokens, MICRO_BATCH_TOKENS) == [range(0, 1), range(1, 2)]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated() if cuda else 0
    with kernels.invariant_mode(invariant), LargestTensor() as largest:
        metrics = update_policy(parts, scored, 0)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
    return largest.numel, (torch.cuda.max_memory_allocated() - start if cuda else 0)


@pytest.mark.parametrize("invariant", [True, False], ids=["invariant", "default"])
def test_largest_trainer_tensor_grows_linearly_with_the_sequence(invariant):
    short, long = 1020, 2044  # + the 4-token prompt: 1,024 and 2,048 positions
    (at_s, _), (at_2s, _) = _largest_tensor(invariant, short), _largest_tensor(invariant, long)
    assert at_2s <= 2.2 * at_s, (at_s, at_2s)  # an [S, S] tensor would make this 4x
    assert at_2s < long * VOCAB / 2, (at_2s, long * VOCAB)  # no [tokens, vocab] logits


@pytest.mark.gpu
@pytest.mark.parametrize("invariant", [True, False], ids=["invariant", "default"])
def test_gpu_trainer_memory_grows_linearly_at_8k_and_16k_tokens(invariant):
    short, long = 8188, 16380
    (at_s, peak_s), (at_2s, peak_2s) = (_largest_tensor(invariant, n, "cuda") for n in (short, long))
    print(f"largest tensor {at_s:,} -> {at_2s:,}; peak {peak_s / 2**20:.0f} -> {peak_2s / 2**20:.0f} MiB")
    assert at_2s <= 2.2 * at_s and at_2s < long * VOCAB / 2, (at_s, at_2s)
    assert peak_2s <= 2.3 * peak_s, (peak_s, peak_2s)  # [Hq, S, S] fp32 scores alone would be 4 GiB at 16k
