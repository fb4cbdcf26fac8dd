#!/usr/bin/env python3
"""PyTorch/transformers CPU reference timings to compare edco against.

Loads a GGUF checkpoint (e.g. SmolLM2-135M-Instruct) through transformers'
GGUF support, which dequantizes every tensor to float32, or a Hugging Face
model directory (as `edco init-model` writes), and times one case:

  --case train     forward + backward (cross-entropy on all tokens) + AdamW
                   step on a batch of random tokens (default 4 x 256);
                   --warmup untimed steps, then --steps timed steps.
  --case train-lora  the same step with PEFT LoRA adapters (r 16, alpha 32,
                   no dropout) on every projection, base frozen.
  --case generate  greedy generation for 16 left-padded prompts of 8..40
                   random tokens, exactly --new-tokens new tokens per row
                   (min_new_tokens = max_new_tokens, default 128), with output_scores=True
                   and return_dict_in_generate=True so that the per-step
                   logits are materialized as edco does; --warmup untimed
                   runs, then --iters timed runs.
  --case prefill   one forward over 16 left-padded prompts of 300..450 random
                   tokens (MedQA-sized), logits at the last position only: the
                   first step of entropy scoring; --iters timed runs.
  --case matmul    torch.matmul of 1024 rows against the model's layer shapes
                   (hidden x intermediate, intermediate x hidden, hidden x
                   hidden, hidden x vocabulary), GFLOP/s of the best of 5:
                   the same products as edco's `--case machine`.

Prints one JSON object on stdout (logs go to stderr), with the process's peak
resident memory (model loading included). Example:
  python scripts/bench_torch.py --model \
      ${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      --threads 2 --case train
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch

SEED = 0
NUM_PROMPTS = 16
MIN_PROMPT_LEN = 8
MAX_PROMPT_LEN = 40


def load_model(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    # Ordinary token ids: everything above the added (special) tokens, up to the embedding's rows.
    first = max(tok.added_tokens_decoder) + 1
    rows = model.config.vocab_size
    TOKEN_RANGE[:] = [first if first < rows else 0, rows]
    return model, tok


TOKEN_RANGE = [0, 0]


def random_tokens(gen, tok, shape):
    return torch.randint(TOKEN_RANGE[0], TOKEN_RANGE[1], shape, generator=gen)


def bench_train(model, tok, args, gen):
    if args.case == "train-lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = random_tokens(gen, tok, (args.batch, args.seq_len))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    losses = []
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    elapsed = time.perf_counter() - start
    tokens = args.batch * args.seq_len * args.steps
    return {
        "batch": args.batch,
        "seq_len": args.seq_len,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "seconds": elapsed,
        "seconds_per_step": elapsed / args.steps,
        "tokens_per_s": tokens / elapsed,
        "losses": losses,
    }


def left_padded_prompts(gen, tok, pad, shortest, longest):
    """NUM_PROMPTS random prompts of evenly spread lengths, left-padded: lengths, width, ids, mask."""
    lengths = torch.linspace(shortest, longest, NUM_PROMPTS).round().long().tolist()
    width = max(lengths)
    ids = torch.full((NUM_PROMPTS, width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = random_tokens(gen, tok, (n,))
        mask[row, width - n :] = 1
    return lengths, width, ids, mask


def bench_generate(model, tok, args, gen):
    model.eval()
    pad = tok.pad_token_id
    lengths, width, ids, mask = left_padded_prompts(gen, tok, pad, MIN_PROMPT_LEN, MAX_PROMPT_LEN)

    def run():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=pad,
                output_scores=True,
                return_dict_in_generate=True,
            )
        new = out.sequences.shape[1] - width
        assert new == args.new_tokens and len(out.scores) == new, f"generated {new} tokens"
        return out

    for _ in range(args.warmup):
        run()
    start = time.perf_counter()
    for _ in range(args.iters):
        run()
    elapsed = time.perf_counter() - start
    new_tokens = NUM_PROMPTS * args.new_tokens * args.iters
    return {
        "prompts": NUM_PROMPTS,
        "prompt_lengths": lengths,
        "new_tokens_per_row": args.new_tokens,
        "warmup_iters": args.warmup,
        "timed_iters": args.iters,
        "seconds": elapsed,
        "seconds_per_iter": elapsed / args.iters,
        "new_tokens_per_s": new_tokens / elapsed,
    }


def bench_prefill(model, tok, args, gen):
    model.eval()
    pad = tok.pad_token_id
    lengths, width, ids, mask = left_padded_prompts(gen, tok, pad, 300, 450)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def run():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits

    for _ in range(args.warmup):
        run()
    start = time.perf_counter()
    for _ in range(args.iters):
        run()
    elapsed = time.perf_counter() - start
    tokens = sum(lengths) * args.iters
    return {
        "prompts": NUM_PROMPTS,
        "prompt_tokens": sum(lengths),
        "timed_iters": args.iters,
        "seconds_per_iter": elapsed / args.iters,
        "prompt_tokens_per_s": tokens / elapsed,
    }


def bench_matmul(model, tok, args, gen):
    c = model.config
    h, i, v = c.hidden_size, c.intermediate_size, c.vocab_size
    rates = {}
    for k, n in [(h, i), (i, h), (h, h), (h, v)]:
        a = torch.randn(1024, k, generator=gen)
        b = torch.randn(k, n, generator=gen)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        rates[f"1024x{k}x{n}"] = 2 * 1024 * k * n / best / 1e9
    return {"matmul_gflops": rates}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "--gguf", dest="model", required=True, help="GGUF file or Hugging Face model directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", choices=["train", "train-lora", "generate", "prefill", "matmul"], required=True)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (train) or runs (generate)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (train)")
    parser.add_argument("--batch", type=int, default=4, help="train batch size")
    parser.add_argument("--seq-len", type=int, default=256, help="train sequence length")
    parser.add_argument("--iters", type=int, default=3, help="timed generate runs")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens per row (generate)")
    args = parser.parse_args()

    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    load_start = time.perf_counter()
    model, tok = load_model(args.model)
    load_seconds = time.perf_counter() - load_start

    bench = {"train": bench_train, "train-lora": bench_train, "generate": bench_generate, "prefill": bench_prefill,
             "matmul": bench_matmul}[args.case]
    result = {
        "tool": "pytorch",
        "case": args.case,
        "model": Path(args.model).name,
        "dtype": "float32",
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_seconds": load_seconds,
    }
    result.update(bench(model, tok, args, gen))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
