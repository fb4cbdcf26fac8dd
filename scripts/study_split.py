#!/usr/bin/env python3
"""Cuts the pools and held-out sets of the curriculum studies from the normalised public QA sets.

Usage: scripts/study_split.py DATA DEST TASK...

DATA is the folder of the sets (telecom/, medicine/, law/); DEST gets TASK_pool.jsonl and
TASK_eval.jsonl for each task, the same cut every time: PubMedQA's official train split as the
pool and 300 of its test split held out; for the others a shuffle with a fixed seed, 300 held-out
items and a pool of the 800 after them. A file already in DEST must hold that cut, or the script
stops (a study's runs must all read the same files).
"""
import json, random, sys, os
data, dest, tasks = sys.argv[1], sys.argv[2], sys.argv[3:]
def read(path):
    with open(os.path.join(data, path)) as f:
        return [json.loads(l) for l in f if l.strip()]
def shuffled(items):
    items = list(items)
    random.Random(0).shuffle(items)
    return items
splits = {}
for t in tasks:
    if t == "pubmedqa":
        items = read("medicine/pubmedqa_pqal.jsonl")
        pool = [x for x in items if x["meta"]["split"] == "train"]
        held = shuffled(x for x in items if x["meta"]["split"] == "test")[:300]
    elif t == "legalbench":
        items = shuffled(read("law/legalbench.jsonl"))
        held, pool = items[:300], items[300:1100]
    elif t == "teleqna":
        items = shuffled(x for x in read("telecom/teleqna.jsonl")
                         if not x["meta"].get("answer_text_mismatch"))
        held, pool = items[:300], items[300:1100]
    elif t == "oran_easy":
        items = shuffled(x for x in read("telecom/oran_bench.jsonl")
                         if x["meta"]["difficulty"] == "easy")
        held, pool = items[:300], items[300:1100]
    else:
        sys.exit(f"unknown task {t}: expected pubmedqa, legalbench, teleqna or oran_easy")
    for name, part in (("pool", pool), ("eval", held)):
        text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in part)
        path = os.path.join(dest, f"{t}_{name}.jsonl")
        if os.path.exists(path):
            if open(path).read() != text:
                sys.exit(f"{path} holds another split; move it away to cut it again")
        else:
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
