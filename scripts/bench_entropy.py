#!/usr/bin/env python3
"""How cheaply does a prefix score reach the full-sequence entropy score? (EDCO's estimator)

Runs `edco estimate-entropy` on the first N multiple-choice questions of a JSONL file (default 64
MedQA questions) with SmolLM2-135M-Instruct: the full-sequence score (cap 512 tokens) and the
prefix scores for K in {16, 32, 64, 128}, each with 1 and with 4 samples per prompt, plus the
teacher-forced entropy of the reference answer. For every setting it reports the time, the time
reduction against the full score with the same number of samples, and its agreement with
(a) the full score of the same samples (same seeds) and (b) the mean of 4 full samples, the best
available estimate of the model's expected entropy: Spearman rho and the overlap of the top 25%.

In the same run it scores the same prompts with transformers `generate` (same weights, same
sampling, batch 16, left padding, entropies from the raw logits) and reports edco's scored
tokens per second over transformers'.

Usage (from the repository root, after `cargo build --release`):
  PYTHON=venv/bin/python $PYTHON scripts/bench_entropy.py --data PATH/medqa_usmle_test.jsonl
Prints a Markdown table and writes the raw numbers to --out (JSON).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("EDCO_CACHE", Path.home() / ".cache" / "edco"))
GGUF = CACHE / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUICK_ANSWER = "Answer in at most three sentences; keep any reasoning short."
MCQ_INSTRUCTION = "Answer with the letter of the correct option."


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb)


def top_overlap(a, b, frac=0.25):
    n = max(1, round(len(a) * frac))
    ta = set(sorted(range(len(a)), key=lambda i: (-a[i], i))[:n])
    tb = set(sorted(range(len(b)), key=lambda i: (-b[i], i))[:n])
    return len(ta & tb) / n


def run_edco(edco, data, out_dir, name, args):
    out = out_dir / f"{name}.jsonl"
    cmd = [edco, "estimate-entropy", "--model", str(GGUF), "--data", str(data), "--out", str(out),
           "--seed", "0", "--batch-size", "16"] + args
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out_dir / f"{name}.summary.json").read_text())["scores"]
    scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    print(f"  {name}: {summary['seconds']:.1f} s scoring, {wall:.1f} s wall", file=sys.stderr)
    return {"scores": scores, "seconds": summary["seconds"], "tokens": summary["scored_tokens"]}


def mcq_prompt(rec):
    """edco's documented multiple-choice prompt (src/data/mod.rs) plus the quick-answer instruction."""
    s = ""
    ctx = (rec.get("context") or "").strip()
    if ctx:
        s += ctx + "\n\n"
    s += rec["question"].strip() + "\n\n"
    for letter in sorted(rec["options"]):
        s += f"{letter}. {rec['options'][letter].strip()}\n"
    s += "\n" + MCQ_INSTRUCTION
    return s + "\n\n" + QUICK_ANSWER


def run_transformers(records, threads, cap):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template([{"role": "user", "content": mcq_prompt(r)}], tokenize=False,
                                       add_generation_prompt=True) for r in records]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    order = sorted(range(len(prompts)), key=lambda i: -len(tok(prompts[i])["input_ids"]))
    scores, tokens = [0.0] * len(prompts), 0
    torch.manual_seed(0)
    start = time.perf_counter()
    for b in range(0, len(order), 16):
        idx = order[b:b + 16]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=0.7, top_p=0.7, max_new_tokens=cap,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id, output_logits=True,
                                 return_dict_in_generate=True)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        lsm = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        h = -(lsm.exp() * lsm).sum(-1)  # (B, steps)
        for row, i in enumerate(idx):
            ended = (new[row] == eos).nonzero()
            n = int(ended[0]) + 1 if len(ended) else new.shape[1]
            scores[i] = float(h[row, :n].mean())
            tokens += n
    seconds = time.perf_counter() - start
    return {"scores": scores, "seconds": seconds, "tokens": tokens}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--edco", default="target/release/edco")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cap", type=int, default=512)
    p.add_argument("--out", default="bench_entropy.json")
    args = p.parse_args()

    records = [json.loads(line) for line in Path(args.data).read_text().splitlines()[: args.n]]
    work = Path(tempfile.mkdtemp())
    data = work / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    runs = {}
    for samples in (1, 4):
        runs[f"full x{samples}"] = run_edco(args.edco, data, work, f"full{samples}",
                                            ["--full", "--max-tokens", str(args.cap), "--samples", str(samples)])
        for k in (16, 32, 64, 128):
            runs[f"K={k} x{samples}"] = run_edco(args.edco, data, work, f"k{k}s{samples}",
                                                 ["--prefix-tokens", str(k), "--samples", str(samples)])
    runs["teacher-forced"] = run_edco(args.edco, data, work, "tf", ["--teacher-forced"])
    reference = runs["full x4"]["scores"]

    rows = []
    for name, r in runs.items():
        samples = 4 if name.endswith("x4") else 1
        full = runs[f"full x{samples}"]
        rows.append({
            "setting": name,
            "seconds": r["seconds"],
            "time_reduction": 1 - r["seconds"] / full["seconds"],
            "rho_vs_own_full": spearman(r["scores"], full["scores"]),
            "top25_vs_own_full": top_overlap(r["scores"], full["scores"]),
            "rho_vs_full_x4": spearman(r["scores"], reference),
            "top25_vs_full_x4": top_overlap(r["scores"], reference),
        })

    hf = run_transformers(records, args.threads, args.cap)
    edco_full = runs["full x1"]
    speed = {
        "edco_tokens_per_s": edco_full["tokens"] / edco_full["seconds"],
        "transformers_tokens_per_s": hf["tokens"] / hf["seconds"],
        "transformers_seconds": hf["seconds"],
        "rho_edco_full_vs_transformers_full": spearman(edco_full["scores"], hf["scores"]),
    }
    speed["ratio"] = speed["edco_tokens_per_s"] / speed["transformers_tokens_per_s"]
    Path(args.out).write_text(json.dumps({"rows": rows, "speed": speed, "n": len(records)}, indent=2))

    print(f"| setting ({len(records)} questions) | seconds | time saved vs full | rho vs same-seed full | "
          "top-25% overlap | rho vs mean of 4 full | top-25% vs mean of 4 full |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['seconds']:.1f} | {100 * r['time_reduction']:.0f}% | "
              f"{r['rho_vs_own_full']:.2f} | {r['top25_vs_own_full']:.2f} | {r['rho_vs_full_x4']:.2f} | "
              f"{r['top25_vs_full_x4']:.2f} |")
    print()
    print(f"full-sequence scoring, {args.threads} threads: edco {speed['edco_tokens_per_s']:.1f} tokens/s, "
          f"transformers generate {speed['transformers_tokens_per_s']:.1f} tokens/s, ratio {speed['ratio']:.2f}")


if __name__ == "__main__":
    main()
