#!/usr/bin/env python3
"""Reference values from PyTorch/transformers for edco's parity tests.

Three subcommands:

  make-fixtures --out tests/fixtures [--qwen3-tokenizer DIR] [--smollm2-gguf FILE]
      Builds two tiny float32 checkpoints (tiny-qwen3: Qwen3ForCausalLM with tied
      embeddings; tiny-llama3: LlamaForCausalLM with llama3 rope scaling), trains
      each for a few AdamW steps on a learnable token pattern so that the logits
      are far from zero, saves them with save_pretrained, and writes
      reference.safetensors next to each: a padded batch (no padding, left
      padding, right padding) with the position_ids that `generate` would use,
      the eager-attention logits, log_softmax and entropy, plus every row run
      alone without padding. It also writes tokenizer_reference.json: encodings
      and chat-template renders from the Qwen3 tokenizer, from the tokenizer that
      transformers builds out of the SmolLM2 GGUF, and from the Llama 3.2 Instruct
      chat template in <out>/llama3_chat_template.jinja (a verbatim copy of the
      template in meta-llama/Llama-3.2-1B-Instruct's tokenizer_config.json; it is
      committed, not generated). It ends with what make-greedy writes. Library
      versions go into VERSIONS.json, into the metadata of each
      reference.safetensors and greedy.safetensors and into the JSON. Every
      random choice is seeded, so a rerun with the same library versions
      reproduces the files.

  make-greedy --out tests/fixtures
      Loads the tiny-qwen3 and tiny-llama3 checkpoints already in --out (eager
      attention) and writes greedy.safetensors next to each, touching nothing
      else: for three prompts of 5, 9 and 3 ids in 3..300 (seeded with
      GREEDY_SEED), each run alone (batch 1, no padding) through
      model.generate(input_ids, attention_mask=ones, do_sample=False,
      max_new_tokens=12, min_new_tokens=12, eos_token_id=None, pad_token_id=0,
      output_logits=True, output_scores=True, return_dict_in_generate=True):
        prompt_<i>   int64 (n_i,)  the prompt ids
        tokens_<i>   int64 (12,)   the generated ids
        entropy_<i>  float32 (12,) entropy in nats of softmax(raw logits) at
                                   each generated step, computed in float64
        logprob_<i>  float32 (12,) log_softmax(raw logits) at the chosen id
      "Raw logits" are generate's out.logits (no logits processors apply, and
      the script checks that out.scores equals them). It asserts that every
      generated id is the argmax of the raw logits and that the top-1/top-2
      gap is at least GREEDY_MIN_MARGIN, so float32 reordering in another
      implementation cannot flip a token.

  check-checkpoint --dir D [--tol 1e-4]
      D holds expected.safetensors (input_ids, attention_mask, position_ids,
      logits computed by edco) and either model/ (a full Hugging Face directory)
      or base/ + adapter/ (a base directory and a PEFT LoRA adapter). Loads them
      with transformers (and peft), reruns the inputs with eager attention and
      prints the largest absolute logit difference over attention_mask == 1
      positions; exits 1 when it exceeds --tol.

Defaults for the local inputs live under ${EDCO_CACHE:-$HOME/.cache/edco}.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)

CACHE = Path(os.environ.get("EDCO_CACHE", Path.home() / ".cache" / "edco"))

VOCAB = 320
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
SEED = 1234

TRAIN_STEPS = 60
TRAIN_BATCH = 8
TRAIN_LEN = 32
TRAIN_LR = 1e-2

# (number of left pad, number of real tokens, number of right pad) per row.
ROW_LAYOUT = [(0, 12, 0), (4, 8, 0), (0, 9, 3), (7, 5, 0)]
REF_LEN = 12

# make-greedy: prompt lengths, ids drawn uniformly from GREEDY_IDS (inclusive).
GREEDY_PROMPT_LENS = [5, 9, 3]
GREEDY_IDS = (3, 300)
GREEDY_NEW_TOKENS = 12
# Own seed for the prompts: with SEED, tiny-qwen3's first prompt has a step
# whose top-1/top-2 logit gap is only 1.2e-3; with 1236 the smallest gap over
# both models is 0.085.
GREEDY_SEED = 1236
GREEDY_MIN_MARGIN = 0.05
GREEDY_MODELS = ["tiny-qwen3", "tiny-llama3"]

ENCODE_TEXTS = [
    "Hello, world! This is a test.",
    "Café naïve résumé — Zürich, São Paulo, Ελληνικά, Москва",
    "你好，世界。日本語のテキスト、한국어 텍스트",
    "Emoji: 😀🚀👍🏽 👨‍👩‍👧‍👦 ❤️",
    "Numbers: 12345 and 3.14159, 1,000,000 and 2024-07-26",
    "def f(x):\n\treturn x * 2\n\n\nclass A:\n    pass\n",
    "<|im_start|>user\nhi<|im_end|>",
    "<think>\nreasoning\n</think>\n\nanswer",
    "  leading and trailing spaces   \n\n multiple\n\n\nnewlines\r\n",
    "Don't stop: it's 'quoted' and \"double\"; I'M, you're, WE'LL.",
    "",
]


def versions():
    import peft
    import tokenizers
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
    }


def produced_by(command="make-fixtures"):
    return f"scripts/parity.py {command} with " + ", ".join(f"{k} {v}" for k, v in versions().items())


# ---------------------------------------------------------------------------
# Tiny checkpoints
# ---------------------------------------------------------------------------

COMMON_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    max_position_embeddings=512,
    attention_bias=False,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
)

LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)


def qwen3_config():
    from transformers import Qwen3Config

    return Qwen3Config(
        **COMMON_CONFIG,
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=1e6),
    )


def llama3_config():
    from transformers import LlamaConfig

    return LlamaConfig(**COMMON_CONFIG, tie_word_embeddings=False, rope_parameters=dict(LLAMA3_ROPE))


def check_llama3_scaling_matters(config):
    """The llama3 scaling must leave some frequencies alone, divide some by
    `factor` and interpolate at least one, or the fixture would not test it."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim = config.head_dim
    plain = 1.0 / (LLAMA3_ROPE["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    ratio = plain / scaled
    unchanged = torch.isclose(ratio, torch.tensor(1.0))
    divided = torch.isclose(ratio, torch.tensor(LLAMA3_ROPE["factor"]))
    smoothed = ~unchanged & ~divided
    assert unchanged.any() and divided.any() and smoothed.any(), f"plain/scaled inv_freq ratios: {ratio.tolist()}"
    return ratio.tolist()


def pattern_batch(gen, batch, length, noise=0.1):
    """Sequences following t+1 = (7 t + 3) mod VOCAB over the ids 3.., with
    some positions replaced by random ids."""
    real = VOCAB - 3
    seq = torch.empty(batch, length, dtype=torch.long)
    seq[:, 0] = torch.randint(0, real, (batch,), generator=gen)
    for t in range(1, length):
        seq[:, t] = (seq[:, t - 1] * 7 + 3) % real
    flip = torch.rand(batch, length, generator=gen) < noise
    seq[flip] = torch.randint(0, real, (int(flip.sum()),), generator=gen)
    return seq + 3


def train_briefly(model, gen):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR)
    for _ in range(TRAIN_STEPS):
        ids = pattern_batch(gen, TRAIN_BATCH, TRAIN_LEN)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def reference_batch(gen):
    ids = torch.full((len(ROW_LAYOUT), REF_LEN), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (left, n, right) in enumerate(ROW_LAYOUT):
        assert left + n + right == REF_LEN
        ids[row, left : left + n] = pattern_batch(gen, 1, n)[0]
        mask[row, left : left + n] = 1
    # Exactly what transformers' generate() does for a padded batch.
    pos = mask.cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    return ids, mask, pos


def make_model_fixture(name, config, out, vers):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    final_loss = train_briefly(model, gen)

    model_dir = out / name
    model_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=[EOS_ID], pad_token_id=PAD_ID)
    model.save_pretrained(model_dir)

    # Reference values come from the saved files, loaded the way edco's users would.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids, mask, pos = reference_batch(gen)
    tensors = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        logp = torch.log_softmax(logits.double(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        tensors.update(logits=logits, log_softmax=logp.float(), entropy=entropy.float())
        worst = 0.0
        for row in range(ids.shape[0]):
            keep = mask[row].bool()
            n = int(keep.sum())
            alone = model(input_ids=ids[row, keep][None], position_ids=torch.arange(n)[None]).logits[0].float()
            tensors[f"single_row_logits_{row}"] = alone
            worst = max(worst, float((alone - logits[row, keep]).abs().max()))
    assert worst < 1e-4, f"{name}: padding changes logits by {worst}"

    real_logits = logits[mask.bool()]
    std = float(real_logits.std())
    assert std > 1.0, f"{name}: logits std {std} too small, train longer"
    # One metadata key: safetensors writes several in hash order, which would
    # make reruns differ byte-wise.
    info = {
        "produced_by": produced_by(),
        "versions": vers,
        "model": name,
        "seed": SEED,
        "pad_id": PAD_ID,
        "note": "only positions with attention_mask == 1 are meaningful",
    }
    metadata = {"info": json.dumps(info, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, model_dir / "reference.safetensors", metadata)
    return {
        "final_train_loss": final_loss,
        "logits_std": std,
        "max_padding_diff": worst,
        "mean_entropy": float(entropy[mask.bool()].mean()),
    }


def greedy_prompts():
    gen = torch.Generator().manual_seed(GREEDY_SEED)
    lo, hi = GREEDY_IDS
    return [torch.randint(lo, hi + 1, (n,), generator=gen) for n in GREEDY_PROMPT_LENS]


def make_greedy_fixture(name, out, vers):
    """Greedy continuations of greedy_prompts() from the checkpoint saved in
    out/name, each prompt alone; see make-greedy in the module docstring.
    make-fixtures and make-greedy write the same bytes, so the metadata names
    make-greedy either way."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model_dir = out / name
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    # eos_token_id=None overrides the [EOS_ID] of generation_config.json, so
    # nothing stops generation early and no min-length processor edits scores.
    generate_kwargs = dict(
        do_sample=False,
        max_new_tokens=GREEDY_NEW_TOKENS,
        min_new_tokens=GREEDY_NEW_TOKENS,
        eos_token_id=None,
        pad_token_id=PAD_ID,
        output_logits=True,
        output_scores=True,  # only for the check that no processor changed the logits
        return_dict_in_generate=True,
    )
    tensors = {}
    min_margin = math.inf
    mean_entropy = []
    for i, prompt in enumerate(greedy_prompts()):
        ids = prompt[None]
        with torch.no_grad():
            res = model.generate(ids, attention_mask=torch.ones_like(ids), **generate_kwargs)
        tokens = res.sequences[0, ids.shape[1] :]
        assert torch.equal(res.sequences[0, : ids.shape[1]], prompt), f"{name} prompt {i}: prompt not echoed"
        assert tokens.shape == (GREEDY_NEW_TOKENS,), f"{name} prompt {i}: generated {tuple(tokens.shape)}"
        logits = torch.cat(res.logits).float()  # (steps, vocab), raw
        scores = torch.cat(res.scores).float()
        assert logits.shape == (GREEDY_NEW_TOKENS, VOCAB), f"{name} prompt {i}: logits {tuple(logits.shape)}"
        assert torch.equal(scores, logits), f"{name} prompt {i}: a logits processor changed the scores"
        assert torch.equal(tokens, logits.argmax(-1)), f"{name} prompt {i}: greedy tokens are not argmax of raw logits"
        top2 = logits.topk(2, dim=-1).values
        margin = float((top2[:, 0] - top2[:, 1]).min())
        assert margin >= GREEDY_MIN_MARGIN, f"{name} prompt {i}: top-1/top-2 gap {margin} is a near tie"
        min_margin = min(min_margin, margin)
        logp = torch.log_softmax(logits.double(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        chosen = logp.gather(-1, tokens[:, None])[:, 0]
        tensors[f"prompt_{i}"] = prompt.to(torch.int64)
        tensors[f"tokens_{i}"] = tokens.to(torch.int64)
        tensors[f"entropy_{i}"] = entropy.float()
        tensors[f"logprob_{i}"] = chosen.float()
        mean_entropy.append(float(entropy.mean()))

    info = {
        "produced_by": produced_by("make-greedy"),
        "versions": vers,
        "model": name,
        "seed": GREEDY_SEED,
        "prompt_lengths": GREEDY_PROMPT_LENS,
        "prompt_id_range_inclusive": list(GREEDY_IDS),
        "attn_implementation": "eager",
        "generate_kwargs": {**generate_kwargs, "attention_mask": "ones"},
        "min_top2_logit_margin": min_margin,
        "note": "each prompt run alone (batch 1, no padding); entropy (nats) and logprob are of "
        "softmax(out.logits), the raw logits, computed in float64 and stored as float32",
    }
    metadata = {"info": json.dumps(info, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, model_dir / "greedy.safetensors", metadata)
    return {"min_top2_logit_margin": min_margin, "mean_entropy_per_prompt": mean_entropy}


def make_greedy(args):
    out = Path(args.out)
    vers = versions()
    summary = {"produced_by": produced_by("make-greedy"), "seed": GREEDY_SEED, "models": {}}
    for name in GREEDY_MODELS:
        summary["models"][name] = make_greedy_fixture(name, out, vers)
    print(json.dumps(summary, indent=2))


def write_legacy_llama3_config(model_dir):
    """Same meaning as config.json, spelled with the pre-transformers-5 keys."""
    config = json.loads((model_dir / "config.json").read_text())
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    (model_dir / "config_legacy_keys.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# Tokenizers and chat templates
# ---------------------------------------------------------------------------

SYSTEM_USER = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a prime number."},
]
MULTI_TURN_THINK = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nreasoning\n</think>\n\nanswer"},
    {"role": "user", "content": "And 3+3?"},
]
USER_ASSISTANT = [
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi!"},
]
USER_ASSISTANT_THINK = [
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "<think>\nThe user wants a greeting.\n</think>\n\nHi!"},
]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def encode_cases(tok):
    cases = []
    for text in ENCODE_TEXTS:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    return cases


def chat_cases(tok, conversations, with_ids=True):
    cases = []
    for messages, kwargs in conversations:
        rendered = tok.apply_chat_template(messages, tokenize=False, **kwargs)
        case = {"messages": messages, "kwargs": kwargs, "rendered": rendered}
        if with_ids:
            case["ids"] = tok(rendered, add_special_tokens=False)["input_ids"]
        cases.append(case)
    return cases


def describe(tok):
    backend = tok.backend_tokenizer
    return {
        "class": type(tok).__name__,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "vocab_size_with_added": len(tok),
        "pre_tokenizer": str(backend.pre_tokenizer),
        "normalizer": str(backend.normalizer),
        "decoder": str(backend.decoder),
        "post_processor": str(backend.post_processor),
        "decode_kwargs": {"skip_special_tokens": False},
        "encode_kwargs": {"add_special_tokens": True},
        "chat_ids_kwargs": {"add_special_tokens": False},
        "chat_template": tok.chat_template,
    }


def qwen3_reference(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    conversations = [
        (SYSTEM_USER, {"add_generation_prompt": True, "enable_thinking": True}),
        (SYSTEM_USER, {"add_generation_prompt": True, "enable_thinking": False}),
        (MULTI_TURN_THINK, {"add_generation_prompt": True, "enable_thinking": True}),
        (USER_ASSISTANT, {"add_generation_prompt": False}),
        (USER_ASSISTANT_THINK, {"add_generation_prompt": False}),
    ]
    ref = describe(tok)
    ref.update(encode=encode_cases(tok), chat=chat_cases(tok, conversations))
    return ref


def smollm2_reference(gguf_file):
    from transformers import AutoTokenizer

    gguf_file = Path(gguf_file)
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    conversations = [
        (SYSTEM_USER, {"add_generation_prompt": True}),
        (FRANCE, {"add_generation_prompt": True}),
    ]
    ref = describe(tok)
    ref.update(gguf_file=gguf_file.name, encode=encode_cases(tok), chat=chat_cases(tok, conversations))
    return ref


def llama3_template_reference(template_file, qwen3_dir):
    """Render the Llama 3.2 template through transformers' own chat machinery.
    The vocabulary does not matter for rendering, so the Qwen3 tokenizer.json
    stands in; ids are not stored."""
    from transformers import PreTrainedTokenizerFast

    template = Path(template_file).read_text()
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(qwen3_dir) / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    tok.chat_template = template
    kwargs = {"add_generation_prompt": True, "date_string": "26 Jul 2024"}
    conversations = [
        (SYSTEM_USER, kwargs),
        ([{"role": "user", "content": "  Hello there!\n"}], kwargs),
    ]
    return {
        "template_file": Path(template_file).name,
        "bos_token": tok.bos_token,
        "chat": chat_cases(tok, conversations, with_ids=False),
    }


def make_fixtures(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vers = versions()
    summary = {"produced_by": produced_by(), "versions": vers, "seed": SEED, "models": {}}

    llama_config = llama3_config()
    summary["llama3_inv_freq_ratio_plain_over_scaled"] = check_llama3_scaling_matters(llama_config)
    summary["models"]["tiny-qwen3"] = make_model_fixture("tiny-qwen3", qwen3_config(), out, vers)
    summary["models"]["tiny-llama3"] = make_model_fixture("tiny-llama3", llama_config, out, vers)
    write_legacy_llama3_config(out / "tiny-llama3")
    # Kept out of VERSIONS.json so that make-greedy alone leaves it consistent.
    greedy = {name: make_greedy_fixture(name, out, vers) for name in GREEDY_MODELS}

    tokenizers = {
        "qwen3": qwen3_reference(args.qwen3_tokenizer),
        "smollm2_gguf": smollm2_reference(args.smollm2_gguf),
    }
    reference = {"produced_by": produced_by(), "tokenizers": tokenizers}
    template_file = out / "llama3_chat_template.jinja"
    if template_file.exists():
        reference["llama3_template"] = llama3_template_reference(template_file, args.qwen3_tokenizer)
    else:
        print(f"note: {template_file} missing, no llama3_template renders", file=sys.stderr)
    (out / "tokenizer_reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    (out / "VERSIONS.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({**summary, "greedy": greedy}, indent=2))


# ---------------------------------------------------------------------------
# Checking a checkpoint saved by edco
# ---------------------------------------------------------------------------


def load_for_check(d):
    from transformers import AutoModelForCausalLM

    load = dict(dtype=torch.float32, attn_implementation="eager")
    if (d / "model").is_dir():
        return AutoModelForCausalLM.from_pretrained(d / "model", **load), "model"
    if (d / "base").is_dir() and (d / "adapter").is_dir():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(d / "base", **load)
        return PeftModel.from_pretrained(base, d / "adapter"), "base+adapter"
    sys.exit(f"{d}: expected model/ or base/ + adapter/")


def check_checkpoint(args):
    from safetensors.torch import load_file

    d = Path(args.dir)
    expected = load_file(d / "expected.safetensors")
    model, kind = load_for_check(d)
    model.eval()
    with torch.no_grad():
        logits = model(
            input_ids=expected["input_ids"].long(),
            attention_mask=expected["attention_mask"].long(),
            position_ids=expected["position_ids"].long(),
        ).logits.float()
    keep = expected["attention_mask"].bool()
    diff = (logits[keep] - expected["logits"].float()[keep]).abs()
    max_diff = float(diff.max())
    ok = math.isfinite(max_diff) and max_diff <= args.tol
    print(json.dumps({"dir": str(d), "kind": kind, "positions": int(keep.sum()), "max_abs_diff": max_diff,
                      "tol": args.tol, "ok": ok}))
    sys.exit(0 if ok else 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    mk = sub.add_parser("make-fixtures", help="write tiny checkpoints and reference values")
    mk.add_argument("--out", required=True)
    mk.add_argument("--qwen3-tokenizer", default=str(CACHE / "qwen3-tokenizer"))
    mk.add_argument("--smollm2-gguf", default=str(CACHE / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    mk.set_defaults(run=make_fixtures)

    gr = sub.add_parser("make-greedy", help="write greedy.safetensors from the tiny checkpoints already in --out")
    gr.add_argument("--out", required=True)
    gr.set_defaults(run=make_greedy)

    ck = sub.add_parser("check-checkpoint", help="compare edco's logits with transformers/peft")
    ck.add_argument("--dir", required=True)
    ck.add_argument("--tol", type=float, default=1e-4)
    ck.set_defaults(run=check_checkpoint)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
