#!/usr/bin/env python3
"""`edco train` against PyTorch on the same CPU, weights, data, batch and lengths.

SmolLM2-135M-Instruct (GGUF, dequantized to float32 on both sides), the first
--samples multiple-choice items of a JSONL file in edco's schema (e.g. MedQA),
rendered the way edco renders them (question, `L. text` option lines, the
instruction; the reply `L. text`) with the model's chat template. Three cases:

  sft-lora  SFT with LoRA (r 16, alpha 32, no dropout, every projection),
            batch --batch, AdamW, loss on the reply tokens only;
  sft-full  the same with every weight trained;
  grpo      GRPO with LoRA: --prompts prompts x --generations completions per
            step, up to --new-tokens sampled tokens (temperature 1), reward 1
            for the right option letter, KL coefficient 0.04, one update per
            rollout batch; --grpo-steps steps.

Each case runs edco (`edco train`, random curriculum, one round over the
items), a plain PyTorch loop (transformers model, PEFT for LoRA, torch AdamW;
for GRPO: `generate`, the same reward, group advantages, the clipped surrogate
and the k3 KL to the base with adapters off) and TRL's SFTTrainer or
GRPOTrainer. SFT figures are
tokens per second over every token of the conversations (prompt and reply,
padding not counted), timed over the optimizer steps only (no model loading,
no tokenization); GRPO figures are seconds per step, rollout included.

Prints a Markdown table on stdout (logs on stderr). Example:
  python scripts/bench_trainer.py --edco target/release/edco \
      --data PATH/medqa_usmle_test.jsonl --threads 2
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CACHE = Path(os.environ.get("EDCO_CACHE", Path.home() / ".cache" / "edco"))
GGUF = CACHE / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MCQ_INSTRUCTION = "Answer with the letter of the correct option."
LR_SFT = 1e-5
LR_GRPO = 1e-6
BETA = 0.04
# The first standalone option letter of a reply: the reward of the PyTorch sides.
LETTER = re.compile(r"\b([A-J])\b")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def mcq_prompt(rec):
    """edco's default `data.mcq_template`: optional context, question, sorted option lines, instruction."""
    s = ""
    if (rec.get("context") or "").strip():
        s += rec["context"].strip() + "\n\n"
    s += rec["question"].strip() + "\n\n"
    for letter in sorted(rec["options"]):
        s += f"{letter}. {rec['options'][letter].strip()}\n"
    return s + "\n" + MCQ_INSTRUCTION


def load_items(path, n):
    items = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("options") and rec.get("answer") in rec["options"]:
                items.append(rec)
            if len(items) == n:
                break
    return items


def export_hf(gguf, out):
    """The GGUF dequantized to a float32 Hugging Face directory: trainers refuse GGUF-flagged models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def load_model(hf_dir, lora):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
    return model, tok


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=PROJECTIONS, task_type="CAUSAL_LM")


def conversations(items):
    return [
        ([{"role": "user", "content": mcq_prompt(r)}],
         [{"role": "assistant", "content": f"{r['answer']}. {r['options'][r['answer']].strip()}"}])
        for r in items
    ]


def tokenize_pairs(tok, convs, max_length):
    """(ids, number of prompt tokens) per conversation, as edco cuts them: the prompt side first."""
    out = []
    for prompt, reply in convs:
        p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(prompt + reply, tokenize=True, return_dict=False)
        ids = list(full)[-max_length:]
        out.append((ids, max(0, len(p) - (len(full) - len(ids)))))
    return out


# ---------------------------------------------------------------- edco


def run_edco(args, work, case, items_path, n_items):
    lora = case != "sft-full"
    method = "grpo" if case == "grpo" else "sft"
    run_dir = work / f"edco-{case}"
    cfg = f"""
method = "{method}"
[model]
source = "{args.gguf}"
finetune = "{'lora' if lora else 'full'}"
lora = {{ r = 16, alpha = 32.0, dropout = 0.0 }}
[data]
train = "{items_path}"
eval = ""
max_length = {args.max_length}
[curriculum]
strategy = "random"
rounds = 1
select_n = {n_items if method == "sft" else args.prompts * args.grpo_steps}
[sft]
learning_rate = {LR_SFT}
min_learning_rate = {LR_SFT}
batch_size = {args.batch}
grad_accum = 1
max_grad_norm = 1.0
[grpo]
num_generations = {args.generations}
prompts_per_step = {args.prompts}
steps_per_round = {args.grpo_steps}
max_completion_length = {args.new_tokens}
temperature = 1.0
top_p = 1.0
learning_rate = {LR_GRPO}
min_learning_rate = {LR_GRPO}
beta = {BETA}
micro_batch = {args.prompts * args.generations}
[eval]
generate = false
option_likelihood = false
loss = false
[run]
output_dir = "{run_dir}"
seed = 0
keep_last = 1
"""
    cfg_path = work / f"edco-{case}.toml"
    cfg_path.write_text(cfg)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    log(f"== edco {case}")
    subprocess.run([args.edco, "train", "--config", str(cfg_path)], check=True, env=env,
                   stdout=sys.stderr)
    steps = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
    steps = [s for s in steps if s.get("kind") == "step"]
    seconds = sum(s["seconds"] for s in steps)
    out = {"steps": len(steps), "seconds": seconds}
    if method == "grpo":
        out["completion_length"] = sum(s["completion_length"] for s in steps) / len(steps)
    return out


# ---------------------------------------------------------------- PyTorch loop


def run_loop(args, case, convs):
    torch.manual_seed(0)
    model, tok = load_model(args.hf, lora=case == "sft-lora")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR_SFT)
    pairs = tokenize_pairs(tok, convs, args.max_length)
    pad = tok.pad_token_id
    log(f"== PyTorch loop {case}")
    seconds = 0.0
    for i in range(0, len(pairs), args.batch):
        batch = pairs[i:i + args.batch]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        for r, (row, p) in enumerate(batch):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            labels[r, p:len(row)] = torch.tensor(row[p:])
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seconds += time.perf_counter() - start
    return {"steps": (len(pairs) + args.batch - 1) // args.batch, "seconds": seconds}


def run_loop_grpo(args, items):
    """GRPO written out in PyTorch, as edco and TRL (loss_type dapo) do it with one update per
    rollout batch: sample G completions per prompt, reward the option letter, advantages
    (r - mean) / (std + 1e-4) per group, the clipped surrogate (ratio 1 at the only update) plus
    beta times the k3 KL to the base with adapters off, averaged over all completion tokens."""
    torch.manual_seed(0)
    model, tok = load_model(args.hf, lora=True)
    tok.padding_side = "left"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR_GRPO)
    rows = items[:args.prompts * args.grpo_steps]
    g, pad, eos = args.generations, tok.pad_token_id, tok.eos_token_id
    log("== PyTorch loop grpo")
    seconds, lengths = 0.0, []
    for step in range(args.grpo_steps):
        batch = rows[step * args.prompts:(step + 1) * args.prompts]
        texts = [tok.apply_chat_template([{"role": "user", "content": mcq_prompt(r)}], add_generation_prompt=True,
                                         tokenize=False) for r in batch]
        start = time.perf_counter()
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        model.eval()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=args.new_tokens, num_return_sequences=g, pad_token_id=pad)
        width = enc.input_ids.shape[1]
        completion = out[:, width:]
        # Completion tokens up to and including the first EOS.
        after_eos = torch.cumsum((completion == eos).long(), dim=1) - (completion == eos).long()
        mask = (after_eos == 0).float()
        replies = tok.batch_decode(completion, skip_special_tokens=True)
        rewards = torch.tensor([1.0 if (m := LETTER.search(text)) and m.group(1) == batch[i // g]["answer"] else 0.0
                                for i, text in enumerate(replies)])
        grouped = rewards.view(-1, g)
        adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1, 1)
        attn = torch.cat([enc.attention_mask.repeat_interleave(g, 0), mask.long()], dim=1)

        def completion_log_probs():
            logits = model(input_ids=out, attention_mask=attn).logits[:, width - 1:-1].float()
            return torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)

        model.train()
        with torch.no_grad(), model.disable_adapter():
            ref = completion_log_probs()
        lp = completion_log_probs()
        ratio = torch.exp(lp - lp.detach())
        surrogate = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv)
        kl = torch.exp(ref - lp) - (ref - lp) - 1
        loss = ((surrogate + BETA * kl) * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seconds += time.perf_counter() - start
        lengths.append(mask.sum(1).mean().item())
    return {"steps": args.grpo_steps, "seconds": seconds, "completion_length": sum(lengths) / len(lengths)}


# ---------------------------------------------------------------- TRL


class StepTimer:
    """Wall time from the start of training to its end, as a TRL callback sees it."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, *a, **k):
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, *a, **k):
                timer.steps = state.global_step
                timer.end = time.perf_counter()

        self.callback = Callback()
        self.steps = 0

    @property
    def seconds(self):
        return self.end - self.start


def common_args(args, work, name):
    return dict(output_dir=str(work / name), use_cpu=True, report_to="none", save_strategy="no",
                logging_steps=1, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                num_train_epochs=1, max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0,
                dataloader_num_workers=0, seed=0, disable_tqdm=True)


def run_trl_sft(args, work, case, convs):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = load_model(args.hf, lora=False)
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in convs])
    cfg = SFTConfig(**common_args(args, work, f"trl-{case}"), learning_rate=LR_SFT, max_length=args.max_length,
                    completion_only_loss=True, packing=False, shuffle_dataset=False)
    timer = StepTimer()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                         peft_config=lora_config() if case == "sft-lora" else None, callbacks=[timer.callback])
    log(f"== TRL SFTTrainer {case}")
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    return {"steps": timer.steps, "seconds": timer.seconds}


def run_trl_grpo(args, work, items):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load_model(args.hf, lora=False)
    rows = [{"prompt": [{"role": "user", "content": mcq_prompt(r)}], "answer": r["answer"]}
            for r in items[:args.prompts * args.grpo_steps]]
    def reward(prompts, completions, answer, **kw):
        out = []
        for c, a in zip(completions, answer):
            m = LETTER.search(c[0]["content"] if isinstance(c, list) else c)
            out.append(1.0 if m and m.group(1) == a else 0.0)
        return out

    common = common_args(args, work, "trl-grpo")
    common["per_device_train_batch_size"] = args.prompts * args.generations
    cfg = GRPOConfig(**common, learning_rate=LR_GRPO, num_generations=args.generations,
                     max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, beta=BETA,
                     epsilon=0.2, num_iterations=1, loss_type="dapo", shuffle_dataset=False, max_steps=args.grpo_steps)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, args=cfg, reward_funcs=[reward], train_dataset=Dataset.from_list(rows),
                          processing_class=tok, peft_config=lora_config(), callbacks=[timer.callback])
    log("== TRL GRPOTrainer")
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    return {"steps": timer.steps, "seconds": timer.seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edco", required=True, help="the edco binary")
    ap.add_argument("--data", required=True, help="JSONL of multiple-choice items (question, options, answer)")
    ap.add_argument("--gguf", default=str(GGUF))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=16, help="SFT items (one pass)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--prompts", type=int, default=2, help="GRPO prompts per step")
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--grpo-steps", type=int, default=3)
    ap.add_argument("--cases", default="sft-lora,sft-full,grpo")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    items = load_items(args.data, max(args.samples, args.prompts * args.grpo_steps))
    convs = conversations(items[:args.samples])
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        args.hf = work / "hf"
        export_hf(args.gguf, args.hf)
        _, tok = load_model(args.hf, lora=False)
        sft_tokens = sum(len(ids) for ids, _ in tokenize_pairs(tok, convs, args.max_length))
        items_path = work / "items.jsonl"
        items_path.write_text("".join(json.dumps(r) + "\n" for r in items[:args.samples]))
        grpo_path = work / "grpo_items.jsonl"
        grpo_path.write_text("".join(json.dumps(r) + "\n" for r in items[:args.prompts * args.grpo_steps]))
        for case in args.cases.split(","):
            if case.startswith("sft"):
                e = run_edco(args, work, case, items_path, args.samples)
                p = run_loop(args, case, convs)
                t = run_trl_sft(args, work, case, convs)
                tps = {k: sft_tokens / v["seconds"] for k, v in (("edco", e), ("loop", p), ("trl", t))}
                log(case, json.dumps({"edco": e, "loop": p, "trl": t, "tokens": sft_tokens}))
                rows.append((f"{case}: {args.samples} items, batch {args.batch}, tokens/s", tps["edco"],
                             tps["loop"], tps["trl"], True))
            elif case == "grpo":
                e = run_edco(args, work, case, grpo_path, args.prompts * args.grpo_steps)
                p = run_loop_grpo(args, items)
                t = run_trl_grpo(args, work, items)
                log(case, json.dumps({"edco": e, "loop": p, "trl": t}))
                rows.append((f"grpo (LoRA): {args.prompts} prompts x {args.generations}, up to {args.new_tokens} "
                             f"new tokens, s/step (mean completion: edco {e['completion_length']:.1f}, "
                             f"loop {p['completion_length']:.1f} tokens)",
                             e["seconds"] / e["steps"], p["seconds"] / p["steps"], t["seconds"] / t["steps"], False))
            else:
                sys.exit(f"unknown case {case}")
    print(f"| SmolLM2-135M, f32, CPU, {args.threads} threads | edco | PyTorch loop | TRL | edco speed vs loop | edco speed vs TRL |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, e, p, t, higher_better in rows:
        def ratio(x):
            if x is None:
                return "-"
            return f"{(e / x if higher_better else x / e):.2f}"
        fmt = lambda x: "-" if x is None else f"{x:.1f}"
        print(f"| {label} | {fmt(e)} | {fmt(p)} | {fmt(t)} | {ratio(p)} | {ratio(t)} |")


if __name__ == "__main__":
    main()
