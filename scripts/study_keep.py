#!/usr/bin/env python3
"""Keeps a study's records without its weights, so that it can be finished elsewhere.

Usage: scripts/study_keep.py STUDY ARCHIVE.tar.xz

STUDY is an `edco compare` directory (holding study.json). The archive holds study.json, the
study's config file when it lies next to STUDY (as scripts/study_curriculum.sh writes it), the
report, the base model's results on the pool, and of every finished run its config, fingerprint, metrics, curricula and per-sample
evaluations: what the report is computed from. Checkpoints (the weights), the per-round scores
of the whole pool and the pictures are left out, and so are unfinished runs, which start again.
Unpack it where the study was (`tar -xJf ARCHIVE -C PARENT_OF_STUDY`) and run the study's
command again: it reports the finished runs and runs the rest.

The archive is written to a temporary name and renamed into place; an existing ARCHIVE is
replaced only by a complete new one.
"""

import json
import os
import sys
import tarfile
import tempfile
import tomllib

KEEP = ("config.toml", "fingerprint.json", "metrics.jsonl", "curriculum", "eval")


def finished(run):
    """Whether the run logged its last round (the rounds its config asks for)."""
    try:
        with open(os.path.join(run, "config.toml"), "rb") as f:
            rounds = tomllib.load(f).get("curriculum", {}).get("rounds")
        with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return False
    return any(l.get("kind") == "round" and l.get("round") == rounds for l in lines)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    study, archive = (os.path.normpath(p) for p in sys.argv[1:])
    if not os.path.isfile(os.path.join(study, "study.json")):
        sys.exit(f"{study}: not a study (no study.json)")
    parent, name = os.path.split(os.path.abspath(study))
    members = [name + "/study.json"]
    for extra in ("report.md", "report.json", "base/pool.jsonl"):
        if os.path.isfile(os.path.join(study, extra)):
            members.append(f"{name}/{extra}")
    if os.path.isfile(os.path.join(parent, name + ".toml")):
        members.append(name + ".toml")
    kept, left = 0, 0
    runs = os.path.join(study, "runs")
    for arm in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        for seed in sorted(os.listdir(os.path.join(runs, arm))):
            run = os.path.join(runs, arm, seed)
            if not finished(run):
                left += 1
                continue
            kept += 1
            for part in KEEP:
                if os.path.exists(os.path.join(run, part)):
                    members.append(f"{name}/runs/{arm}/{seed}/{part}")
    out_dir = os.path.dirname(os.path.abspath(archive))
    fd, tmp = tempfile.mkstemp(prefix=".study-keep-", suffix=".tar.xz", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:xz") as tar:
            for m in members:
                tar.add(os.path.join(parent, m), arcname=m, filter=plain)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"{archive}: {kept} finished runs kept, {left} unfinished left out")


def plain(info):
    """No owner, no times beyond the files' own: an archive that says nothing of the machine."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


if __name__ == "__main__":
    main()
