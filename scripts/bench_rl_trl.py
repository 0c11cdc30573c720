"""bench_rl's TRL system: TRL's `GRPOTrainer` (HF generate backend) run live on the same model, data and sampling.

Same model: our random weights (the state dict onpolicy's systems load) written as an HF directory by
`onpolicy.model.loading.save_pretrained` and loaded by TRL through transformers in bf16; the loaded weights are
checked bitwise against ours before the first step. Same data: the same random prompt ids per step, as text of a
word-level tokenizer with one word per id ("t123"), so TRL's tokenisation gives back exactly those ids
(`datasets.Dataset`, not shuffled: TRL step k gets the prompts of our step k). Same sampling: `num_generations`
samples per prompt at temperature 1.0, no top-k/p, completions of exactly the workload's length
(min_new_tokens = max_new_tokens, so EOS is never sampled; checked every step); a seeded random reward. One TRL
optimizer step = the whole prompts x generations batch: per-device micro-batches of as many whole sequences as
fit the onpolicy run's `trainer.micro_batch_tokens`, gradient accumulation over the rest; gradient
checkpointing, bf16, lr 1e-6, AdamW betas (0.9, 0.99), grad-norm clip 1.0, `loss_type` grpo, beta 0.
Timing and memory as for onpolicy: wall time of a step (generation is "sample", the rest "train"), CUDA synced at
each boundary, torch's peak allocated memory per phase. TRL runs with torch's stock settings (deterministic
algorithms off), as TRL users run it. Left out: vLLM, TRL's own model-loading defaults beyond dtype, fp32 masters
(TRL trains the bf16 parameters directly, which is what its default bf16 load does).
"""
from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time

import torch

GIB = float(1 << 30)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3: the random prompts use ids >= 4


def available() -> bool:
    """Whether trl (and datasets) import here."""
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def id_tokenizer(vocab_size: int):
    """A PreTrainedTokenizerFast with one word per id ("t<id>", specials first): text <-> ids exactly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left", model_max_length=1 << 30)


def micro_batch_seqs(total: int, seq_len: int, token_budget: int) -> int:
    """The largest divisor of `total` sequences whose tokens fit `token_budget` (at least 1)."""
    return max([b for b in range(1, total + 1) if total % b == 0 and b * seq_len <= token_budget] or [1])


@contextlib.contextmanager
def torch_defaults():
    """torch's stock numerics (what determinism.enable changed), restored afterwards."""
    b = torch.backends
    saved = (torch.are_deterministic_algorithms_enabled(), b.cudnn.deterministic, b.cudnn.allow_tf32,
             b.cuda.matmul.allow_bf16_reduced_precision_reduction,
             b.cuda.matmul.allow_fp16_reduced_precision_reduction)
    torch.use_deterministic_algorithms(False)
    b.cudnn.deterministic, b.cudnn.allow_tf32 = False, True
    b.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    b.cuda.matmul.allow_fp16_reduced_precision_reduction = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        (b.cudnn.deterministic, b.cudnn.allow_tf32, b.cuda.matmul.allow_bf16_reduced_precision_reduction,
         b.cuda.matmul.allow_fp16_reduced_precision_reduction) = saved[1:]


class StepClock:
    """Per optimizer step: wall time and peak memory of generation ("sample") and of the rest ("train")."""

    def __init__(self, device: torch.device, work, prompts_by_step):
        self.device, self.work, self.prompts_by_step, self.rows, self._t0 = device, work, prompts_by_step, [], None

    def _mark(self) -> tuple[float, float | None]:
        if self.device.type != "cuda":
            return time.perf_counter(), None
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) / GIB
        torch.cuda.reset_peak_memory_stats(self.device)
        return time.perf_counter(), peak

    def step_begin(self) -> None:
        self._t0, _ = self._mark()
        self.rows.append({})

    def generated(self, prompt_ids, completion_ids) -> None:
        """After TRL's generate: checks it got our step's prompt ids (each num_generations times) and gave
        completions of exactly the workload's length."""
        t, peak = self._mark()
        want = [tuple(p) for p in self.prompts_by_step(len(self.rows) - 1) for _ in range(self.work.generations)]
        if sorted(map(tuple, prompt_ids)) != sorted(want):
            raise RuntimeError("trl: the prompt ids TRL generated from differ from this step's prompts")
        lengths = {len(c) for c in completion_ids}
        if lengths != {self.work.length}:
            raise RuntimeError(f"trl: completion lengths {sorted(lengths)}, expected exactly {self.work.length}")
        self.rows[-1].update(sample_s=t - self._t0, sample_peak_gib=peak, tokens=sum(map(len, completion_ids)))
        self._t0 = t

    def step_end(self) -> None:
        t, peak = self._mark()
        self.rows[-1].update(train_s=t - self._t0, train_peak_gib=peak)


def _trainer(hf_dir, tokenizer, dataset, clock, work, bench, args, steps):
    """A GRPOTrainer for `steps` optimizer steps of the workload, with `clock` wired into its step."""
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    total, seq = work.prompts * work.generations, work.prompt_len + work.length
    per_device = micro_batch_seqs(total, seq, bench["micro_batch_tokens"])
    config = GRPOConfig(
        output_dir=os.path.join(hf_dir, "out"), max_steps=steps, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=total // per_device, num_generations=work.generations,
        max_completion_length=work.length, generation_kwargs={"min_new_tokens": work.length}, temperature=1.0,
        top_p=1.0, top_k=0, learning_rate=bench["lr"], lr_scheduler_type="constant", adam_beta1=0.9,
        adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0, loss_type="grpo", beta=0.0,
        gradient_checkpointing=bench["checkpointing"], bf16=True, use_cpu=args.device == "cpu",
        shuffle_dataset=False, seed=0, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        model_init_kwargs={"dtype": torch.bfloat16}, dataloader_num_workers=0)
    rng = torch.Generator().manual_seed(0)

    def random_reward(completions, **_):
        return torch.rand(len(completions), generator=rng).tolist()

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            clock.step_begin()

        def on_step_end(self, *_, **__):
            clock.step_end()

    trainer = GRPOTrainer(model=hf_dir, reward_funcs=random_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()])
    generate_one = trainer._generate_single_turn

    def timed_generate(prompt_ids, *a, **kw):
        completion_ids, logprobs = generate_one(prompt_ids, *a, **kw)
        clock.generated(prompt_ids, completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate
    return trainer, per_device


def _check_weights(trainer, ours: dict) -> None:
    """TRL's loaded parameters equal ours bitwise (bf16), name by name."""
    theirs = trainer.model.state_dict()
    bad = [k for k, v in ours.items() if k not in theirs or not torch.equal(theirs[k].detach().cpu(), v)]
    if bad:
        raise RuntimeError(f"trl: loaded weights differ from onpolicy's: {bad[:4]}")


def bench_trl(name, work, model, prompts_by_step, bench, args):
    """Warm-up + timed TRL steps on `model`'s weights (an onpolicy CausalLM, CPU, bf16) -> a result row."""
    from datasets import Dataset

    from onpolicy.model.loading import hf_state_dict, save_pretrained

    device = torch.device(args.device)
    resident = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None  # others' leftovers
    steps = args.warmup + args.steps
    tokenizer = id_tokenizer(model.config.vocab_size)
    texts = [" ".join(f"t{i}" for i in ids) for step in range(steps) for ids in prompts_by_step(step)]
    clock = StepClock(device, work, prompts_by_step)
    with tempfile.TemporaryDirectory(prefix="bench_rl_trl_") as hf_dir, torch_defaults():
        save_pretrained(model, hf_dir)
        trainer, per_device = _trainer(hf_dir, tokenizer, Dataset.from_dict({"prompt": texts}), clock, work,
                                       bench, args, steps)
        _check_weights(trainer, hf_state_dict(model))
        trainer.train()
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for i, r in enumerate(clock.rows):
        print(f"  {name} trl step {i}: {r}", flush=True)
    timed = clock.rows[args.warmup:]
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    peak = lambda k: None if device.type != "cuda" else max(r[k] for r in clock.rows)  # noqa: E731
    import trl

    row = {"workload": name, "system": "trl", "trl": trl.__version__, "sample_s": mean("sample_s"),
           "train_s": mean("train_s"), "step_s": mean("sample_s") + mean("train_s"),
           "sample_peak_gib": peak("sample_peak_gib"), "train_peak_gib": peak("train_peak_gib"),
           "per_device_batch": per_device, "resident_before_gib": resident, "tokens_per_step": timed[0]["tokens"]}
    row["peak_gib"] = None if row["sample_peak_gib"] is None else max(row["sample_peak_gib"], row["train_peak_gib"])
    return row
