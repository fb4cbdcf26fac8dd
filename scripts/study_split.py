#!/usr/bin/env python3
"""Cuts the pools and held-out sets of the curriculum studies from the normalised public QA sets.

Usage: scripts/study_split.py DATA DEST TASK...

DATA is the folder of the sets (telecom/, medicine/, law/); DEST gets TASK_pool.jsonl and
TASK_eval.jsonl for each task (oran_easy, teleqna, legalbench, pubmedqa), the same cut every
time. PubMedQA: its official train split is the pool, and 300 of its test split are held out.
The others: shuffled with a fixed seed, then walked in that order, 300 items held out and a pool
of 800 after them, where
- an item that repeats an earlier one (question, options and answer) is dropped;
- the items sharing a question text go all to the held-out set or all to the pool, so that no
  question is both trained on and evaluated (ORAN-Bench repeats questions with other options);
- items that cannot be answered from their text are dropped: ORAN-Bench questions about "the
  provided context" (which the data does not hold), TeleQnA items whose question is only
  "Research Papers", and the 5 TeleQnA items whose answer text matches no option.
A file already in DEST must hold that cut, or the script stops: a study's runs must all read
the same files.
"""
import json
import os
import random
import sys
import tempfile

HELD_OUT, POOL = 300, 800


def read(data, path):
    with open(os.path.join(data, path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def shuffled(items):
    items = list(items)
    random.Random(0).shuffle(items)
    return items


def question_key(x):
    return " ".join(x["question"].lower().split())


def split_by_question(items):
    """Held-out set and pool from shuffled items, whole question groups at a time."""
    seen, groups, order = set(), {}, []
    for x in items:
        item = (question_key(x), json.dumps(x["options"], sort_keys=True), x["answer"])
        if item in seen:
            continue
        seen.add(item)
        key = question_key(x)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(x)
    held, pool = [], []
    for key in order:
        group = groups[key]
        if len(held) + len(group) <= HELD_OUT and len(held) < HELD_OUT:
            held.extend(group)
        else:
            pool.extend(group)
    return held, pool[:POOL]


def cut(data, task):
    if task == "pubmedqa":
        items = read(data, "medicine/pubmedqa_pqal.jsonl")
        pool = [x for x in items if x["meta"]["split"] == "train"]
        held = shuffled(x for x in items if x["meta"]["split"] == "test")[:HELD_OUT]
        return held, pool
    if task == "legalbench":
        return split_by_question(shuffled(read(data, "law/legalbench.jsonl")))
    if task == "teleqna":
        items = shuffled(x for x in read(data, "telecom/teleqna.jsonl")
                         if not x["meta"].get("answer_text_mismatch"))
        return split_by_question(x for x in items if x["question"].strip() != "Research Papers")
    if task == "oran_easy":
        items = shuffled(x for x in read(data, "telecom/oran_bench.jsonl")
                         if x["meta"]["difficulty"] == "easy")
        return split_by_question(x for x in items if "provided context" not in x["question"])
    sys.exit(f"unknown task {task}: expected oran_easy, teleqna, legalbench or pubmedqa")


def write_once(path, text):
    """Writes `text` to `path` unless it exists; an existing file must hold `text`."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() != text:
                sys.exit(f"{path} holds another cut; use another DEST, or move it away to cut "
                         "it again (and begin the studies that read it again)")
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".split.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            write_once(path, text)
    finally:
        os.unlink(tmp)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    data, dest, tasks = sys.argv[1], sys.argv[2], sys.argv[3:]
    for task in tasks:
        held, pool = cut(data, task)
        for name, part in (("pool", pool), ("eval", held)):
            text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in part)
            write_once(os.path.join(dest, f"{task}_{name}.jsonl"), text)


main()
