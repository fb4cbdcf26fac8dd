//! Nothing a user owns is lost, and every bad value is refused, by class: commands that would
//! overwrite or delete what they did not create, resumes that would let a run change under it,
//! non-finite numbers, the model's context, messages that must point the right way, and checks
//! that must come before the expensive work. Each test runs the release binary as a user does.

use crate::common;
use crate::train::{config_text, edco_under, write_pool};

use common::fixture_with_tokenizer;
use std::path::Path;
use std::process::{Command, Output};

fn edco_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edco"))
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// The command failed, without a panic, with `expected` in its message; returns the message.
fn refused(o: &Output, expected: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "accepted; expected `{expected}`: {err}"
    );
    assert!(
        err.contains(expected) && !err.contains("panicked"),
        "expected `{expected}`: {err}"
    );
    err
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

/// Every file under `dir` with its bytes, to show that a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                out.push((p.display().to_string(), Vec::new()));
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn commands_never_overwrite_or_delete_what_they_did_not_create() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let m = model.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pool(&d.join("pool.jsonl"), 4);
    let before = snapshot(d);

    // An output that is an input, under any spelling.
    let o = edco_in(
        d,
        &[
            "estimate-entropy",
            "--model",
            m,
            "--data",
            "pool.jsonl",
            "--out",
            "./pool.jsonl",
        ],
    );
    refused(
        &o,
        "--out ./pool.jsonl: that is, holds or lies inside the --data",
    );
    let o = edco_in(
        d,
        &[
            "perplexity",
            "--model",
            m,
            "--data",
            "pool.jsonl",
            "--out",
            "pool.jsonl",
        ],
    );
    refused(&o, "lies inside the --data");
    let inside = format!("{m}/scores.jsonl");
    let o = edco_in(
        d,
        &[
            "estimate-entropy",
            "--model",
            m,
            "--data",
            "pool.jsonl",
            "--out",
            &inside,
        ],
    );
    refused(&o, "lies inside the --model");
    assert_eq!(snapshot(d), before);

    // An existing output needs --force, and is refused before the model is even read.
    std::fs::write(d.join("scores.summary.json"), "mine").unwrap();
    let o = edco_in(
        d,
        &[
            "estimate-entropy",
            "--model",
            "no-such-model",
            "--data",
            "pool.jsonl",
            "--out",
            "scores.jsonl",
        ],
    );
    refused(
        &o,
        "--out scores.summary.json: already exists; pass --force",
    );
    assert_eq!(
        std::fs::read_to_string(d.join("scores.summary.json")).unwrap(),
        "mine"
    );
    let o = edco_in(
        d,
        &[
            "estimate-entropy",
            "--model",
            m,
            "--data",
            "pool.jsonl",
            "--out",
            "scores.jsonl",
            "--prefix-tokens",
            "2",
            "--force",
        ],
    );
    ok(&o);
    assert!(
        std::fs::read_to_string(d.join("scores.summary.json"))
            .unwrap()
            .contains("mean")
    );

    // init-model: an existing file or a directory with content is left as it is.
    std::fs::write(d.join("notes.txt"), "my notes").unwrap();
    let o = edco_in(d, &["init-model", "--out", "notes.txt"]);
    refused(&o, "--out notes.txt: is a file; pass --force");
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        "my notes"
    );
    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/keep.txt"), "keep").unwrap();
    let o = edco_in(d, &["init-model", "--out", "mine"]);
    refused(&o, "--out mine: already exists and is not empty");
    assert_eq!(
        std::fs::read_to_string(d.join("mine/keep.txt")).unwrap(),
        "keep"
    );
    // Asked to, it replaces the directory whole; an empty one it simply fills.
    ok(&edco_in(d, &["init-model", "--out", "mine", "--force"]));
    assert!(d.join("mine/config.json").is_file() && !d.join("mine/keep.txt").exists());
    std::fs::create_dir(d.join("empty")).unwrap();
    ok(&edco_in(d, &["init-model", "--out", "empty"]));

    // train: a new run refuses a directory that holds anything but a run.
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, config_text(model.path(), d, "")).unwrap();
    std::fs::create_dir(d.join("run")).unwrap();
    std::fs::write(d.join("run/report.md"), "my report").unwrap();
    let o = edco_in(d, &["train", "--config", cfg.to_str().unwrap()]);
    refused(&o, "already exists and holds files that are not a run's");
    let names: Vec<_> = std::fs::read_dir(d.join("run")).unwrap().collect();
    assert_eq!(names.len(), 1);
}

/// Runs one round of the small SFT run in `dir` (checkpointing every step); returns its
/// directory.
fn small_run(model: &Path, dir: &Path) -> std::path::PathBuf {
    let text = config_text(model, dir, "checkpoint_every_steps = 1\nkeep_last = 10")
        .replace("rounds = 2", "rounds = 1");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    ok(&edco_under(
        "true",
        &["train", "--config", cfg.to_str().unwrap()],
    ));
    dir.join("run")
}

fn resume(run: &Path, sets: &[&str]) -> Output {
    let mut args = vec!["train", "--resume", run.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    edco_under("true", &args)
}

#[test]
fn a_resume_refuses_a_changed_model_pool_or_setting_and_passes_a_damaged_checkpoint() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let run = small_run(model.path(), dir.path());
    let config = std::fs::read(run.join("config.toml")).unwrap();
    let untouched = snapshot(&run);

    // A setting the run's state depends on.
    let e = refused(
        &resume(&run, &["model.lora.r=8"]),
        "cannot resume with `model.lora.r` = 8",
    );
    assert!(e.contains("the run started with 4"), "{e}");
    // Another base model, though its path is the same.
    let other = fixture_with_tokenizer("tiny-llama3");
    let moved = dir.path().join("moved-model");
    std::fs::rename(model.path(), &moved).unwrap();
    std::fs::rename(other.path(), model.path()).unwrap();
    refused(&resume(&run, &[]), "is not the model the run started with");
    std::fs::rename(model.path(), other.path()).unwrap();
    // The same model moved elsewhere is the same model.
    let source = format!("model.source=\"{}\"", moved.display());
    // A pool reordered, or shrunk, since the run began.
    let pool = dir.path().join("train.jsonl");
    let original = std::fs::read_to_string(&pool).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    lines.reverse();
    std::fs::write(&pool, lines.join("\n") + "\n").unwrap();
    refused(
        &resume(&run, &[&source]),
        "the same number of samples, other content",
    );
    std::fs::write(&pool, lines[..10].join("\n") + "\n").unwrap();
    refused(
        &resume(&run, &[&source]),
        "has 10 samples, the run's curriculum 16",
    );
    assert_eq!(
        snapshot(&run),
        untouched,
        "a refused resume wrote something"
    );
    std::fs::write(&pool, &original).unwrap();

    // Safe overrides go through and are recorded, the original config kept.
    let e = ok(&resume(
        &run,
        &[&source, "curriculum.rounds=2", "sft.learning_rate=5e-4"],
    ));
    assert!(
        e.contains("resuming with curriculum.rounds = 2 (was 1)"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(run.join("config.initial.toml")).unwrap(),
        config
    );
    let record = std::fs::read_to_string(run.join("resumes.jsonl")).unwrap();
    assert!(record.contains("\"key\":\"sft.learning_rate\""), "{record}");
    assert_eq!(edco::checkpoint::list(&run).unwrap().len(), 4);

    // A damaged newest checkpoint is passed over for the older one, named, and not removed.
    let all = edco::checkpoint::list(&run).unwrap();
    let newest = all.last().unwrap();
    let optimizer = newest.join(edco::checkpoint::OPTIMIZER);
    let len = std::fs::metadata(&optimizer).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&optimizer)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = ok(&resume(&run, &["curriculum.rounds=3"]));
    assert!(
        e.contains(&format!("checkpoint {} is damaged", newest.display()))
            && e.contains(&format!(
                "resuming from the older {}",
                all[all.len() - 2].display()
            )),
        "{e}"
    );
    // The damaged one is kept aside; round 2 ran again from its middle and wrote its end anew,
    // then round 3 followed.
    let aside = newest.with_file_name(format!(
        "damaged_{}",
        newest.file_name().unwrap().to_str().unwrap()
    ));
    assert!(e.contains(&format!(
        "moved the damaged checkpoint aside to {}",
        aside.display()
    )));
    assert_eq!(
        std::fs::metadata(aside.join(edco::checkpoint::OPTIMIZER))
            .unwrap()
            .len(),
        len / 2
    );
    assert_eq!(std::fs::metadata(&optimizer).unwrap().len(), len);
    assert_eq!(edco::checkpoint::list(&run).unwrap().len(), 6);
}

/// A resumed full fine-tune reads its weights from the checkpoint: a base model that is gone
/// is said, not required.
#[test]
fn a_full_fine_tune_resumes_without_its_base_model() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(model.path(), dir.path(), "").replace("\"lora\"", "\"full\"");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text.replace("rounds = 2", "rounds = 1")).unwrap();
    ok(&edco_under(
        "true",
        &["train", "--config", cfg.to_str().unwrap()],
    ));
    let run = dir.path().join("run");
    let gone = dir.path().join("gone");
    std::fs::rename(model.path(), &gone).unwrap();
    let e = ok(&resume(&run, &["curriculum.rounds=2"]));
    assert!(e.contains("goes on without checking the base model"), "{e}");
    assert_eq!(edco::checkpoint::list(&run).unwrap().len(), 2);
    std::fs::rename(&gone, model.path()).unwrap();
}

/// A copy of the tiny model in which `tensor` holds a NaN.
fn nan_model(tensor: &str) -> tempfile::TempDir {
    let model = fixture_with_tokenizer("tiny-llama3");
    let path = model.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let t = &tensors[tensor];
    let mut values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    values[3] = f32::NAN;
    let nan = candle_core::Tensor::from_vec(values, t.shape(), &candle_core::Device::Cpu).unwrap();
    tensors.insert(tensor.into(), nan);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    model
}

#[test]
fn non_finite_logits_and_settings_stop_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pool(&d.join("pool.jsonl"), 3);
    // A NaN in the final norm reaches every logit directly; one in a query projection only
    // through attention, whose softmax must not take a line of NaN scores for a masked one.
    let in_attention = nan_model("model.layers.0.self_attn.q_proj.weight");
    let model = nan_model("model.norm.weight");
    for (m, dtype) in [
        (model.path(), "f32"),
        (model.path(), "bf16"),
        (in_attention.path(), "f32"),
        (in_attention.path(), "bf16"),
    ] {
        let m = m.to_str().unwrap();
        let score = |extra: &[&str]| {
            let mut args = vec![
                "estimate-entropy",
                "--model",
                m,
                "--data",
                "pool.jsonl",
                "--dtype",
                dtype,
                "--out",
                "s.jsonl",
            ];
            args.extend(extra);
            edco_in(d, &args)
        };
        for extra in [
            &["--prefix-tokens", "4"][..],
            &["--teacher-forced"],
            &["--full"],
        ] {
            let e = refused(&score(extra), "sample `item-");
            assert!(
                e.contains("the model's logits are not finite"),
                "{dtype} {extra:?}: {e}"
            );
        }
        refused(
            &edco_in(
                d,
                &[
                    "perplexity",
                    "--model",
                    m,
                    "--data",
                    "pool.jsonl",
                    "--dtype",
                    dtype,
                ],
            ),
            "the model's logits are not finite",
        );
        refused(
            &edco_in(
                d,
                &["generate", "--model", m, "--prompt", "hi", "--dtype", dtype],
            ),
            "prompt 1: the model's logits are not finite",
        );
        assert!(!d.join("s.jsonl").exists());
    }

    // Training on it: the first scoring names the sample; with neither scoring (random order)
    // nor evaluation, the first loss says that no update caused it.
    let run_cfg = d.join("nan.toml");
    std::fs::write(&run_cfg, config_text(model.path(), d, "")).unwrap();
    let train = |out: &str, sets: &[&str]| {
        let out = format!("run.output_dir=\"{}\"", d.join(out).display());
        let mut args = vec![
            "train",
            "--config",
            run_cfg.to_str().unwrap(),
            "--set",
            &out,
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        edco_in(d, &args)
    };
    let e = refused(&train("edco", &[]), "sample `item-");
    assert!(e.contains("the model's logits are not finite"), "{e}");
    refused(
        &train(
            "random",
            &["curriculum.strategy=\"random\"", "data.eval=\"\""],
        ),
        "step 1 (round 1): the loss is not finite before any update",
    );

    // Settings: NaN and infinity anywhere, zero where it divides.
    let good = fixture_with_tokenizer("tiny-qwen3");
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, config_text(good.path(), d, "")).unwrap();
    for (set, expected) in [
        (
            "model.lora.alpha=nan",
            "`model.lora.alpha`: must be a finite number, got NaN",
        ),
        ("sft.eps=0", "`sft.eps`: must be finite and positive, got 0"),
        (
            "sft.learning_rate=inf",
            "`sft.learning_rate`: must be a finite number, got inf",
        ),
        (
            "entropy.temperature=inf",
            "`entropy.temperature`: must be a finite number",
        ),
        (
            "model.lora.alpha=0",
            "`model.lora.alpha`: must be finite and positive",
        ),
    ] {
        let o = edco_in(
            d,
            &[
                "train",
                "--config",
                cfg.to_str().unwrap(),
                "--set",
                set,
                "--dry-run",
            ],
        );
        refused(&o, expected);
    }
    let o = edco_in(
        d,
        &[
            "generate",
            "--model",
            model.path().to_str().unwrap(),
            "--prompt",
            "hi",
            "--temperature",
            "inf",
        ],
    );
    refused(&o, "`--temperature`: must be finite and >= 0, got inf");
}

#[test]
fn generation_stops_at_the_model_context() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let config = model.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "\"max_position_embeddings\": 512",
            "\"max_position_embeddings\": 48",
        ),
    )
    .unwrap();
    let m = model.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = edco_in(
        d,
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--raw",
            "--greedy",
            "--max-new-tokens",
            "100000000",
            "--jsonl",
        ],
    );
    let e = ok(&o);
    assert!(
        e.contains("--max-new-tokens 100000000 goes past the model's context of 48 tokens"),
        "{e}"
    );
    let room: u64 = e
        .split("for prompt 1 (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{e}"));
    assert!(room > 40 && room < 48, "{e}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let tokens = line["tokens"].as_u64().unwrap();
    assert!(
        tokens == room || (tokens < room && line["finished"] == true),
        "{line}"
    );
    let long = "word ".repeat(20);
    let o = edco_in(d, &["generate", "--model", m, "--prompt", &long, "--raw"]);
    let e = refused(&o, "prompt 1 is ");
    assert!(e.contains("tokens: the model's context (48 tokens"), "{e}");
    // Scoring the whole answer fits prompt and answer in the context too.
    write_pool(&d.join("pool.jsonl"), 3);
    let o = edco_in(
        d,
        &[
            "estimate-entropy",
            "--model",
            m,
            "--data",
            "pool.jsonl",
            "--full",
            "--max-tokens",
            "1000",
            "--out",
            "s.jsonl",
        ],
    );
    ok(&o);
}

#[test]
fn messages_point_at_the_file_line_field_or_path() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let m = model.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let score = |data: &str| edco_in(d, &["perplexity", "--model", m, "--data", data]);
    // A byte-order mark is read past; invalid UTF-8 and unknown roles are named by line.
    std::fs::write(
        d.join("bom.jsonl"),
        b"\xef\xbb\xbf{\"prompt\":\"p\",\"completion\":\"c\"}\r\n",
    )
    .unwrap();
    ok(&score("bom.jsonl"));
    std::fs::write(
        d.join("bad.jsonl"),
        b"{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"prompt\":\"\xff\"}\n",
    )
    .unwrap();
    refused(&score("bad.jsonl"), "bad.jsonl:2: not valid UTF-8");
    std::fs::write(
        d.join("sharegpt.jsonl"),
        r#"{"messages":[{"role":"human","content":"q"},{"role":"gpt","content":"a"}]}"#,
    )
    .unwrap();
    refused(
        &score("sharegpt.jsonl"),
        "sharegpt.jsonl:1: field `messages[0].role`: `human` is not a chat role",
    );
    // A mistyped relative path is a missing path, not a hub id looked up on the network.
    std::fs::create_dir(d.join("models")).unwrap();
    let o = edco_in(d, &["generate", "--model", "models/tiny", "--prompt", "hi"]);
    let e = refused(&o, "model `models/tiny`: no such file or directory");
    assert!(!e.contains("dns") && !e.contains("Dns"), "{e}");
    // A malformed safetensors header names the tensor.
    let broken = fixture_with_tokenizer("tiny-qwen3");
    let weights = broken.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // The norm's first dimension changed by one digit, so the header keeps its length.
    let at = header.find("\"model.norm.weight\"").unwrap();
    let digit = at + header[at..].find("\"shape\":[").unwrap() + "\"shape\":[".len();
    let old = header.as_bytes()[digit];
    let new = if old == b'9' { b'1' } else { old + 1 };
    let mut edited = header.into_bytes();
    edited[digit] = new;
    let edited = String::from_utf8(edited).unwrap();
    let mut out = bytes[..8].to_vec();
    out.extend(edited.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(&weights, out).unwrap();
    let o = edco_in(
        d,
        &[
            "generate",
            "--model",
            broken.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ],
    );
    let e = refused(&o, "tensor `model.norm.weight`: shape [");
    assert!(
        e.contains("model.safetensors") && e.contains("bytes, its data_offsets give"),
        "{e}"
    );

    // A directory with a live run is said to have one.
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        config_text(model.path(), d, "").replace("rounds = 2", "rounds = 40"),
    )
    .unwrap();
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let lock = std::fs::File::create(run.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let o = edco_in(d, &["train", "--config", cfg.to_str().unwrap()]);
    refused(&o, "another edco train is running in this directory now");
    drop(lock);

    interrupted_run_says_what_it_kept(&cfg, &run);
}

/// Ctrl-C says what the run kept and how to go on.
#[cfg(unix)]
fn interrupted_run_says_what_it_kept(cfg: &Path, run: &Path) {
    use std::io::Read;
    /// Kills the child if the test fails before it ends.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_edco"))
            .args(["train", "--config", cfg.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read stderr as it comes, so the child never blocks on a full pipe.
    let mut stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // Once a second checkpoint stands, the run has long recorded the first as kept.
    let start = std::time::Instant::now();
    while edco::checkpoint::list(run).unwrap().len() < 2 {
        assert!(
            start.elapsed().as_secs() < 120,
            "no checkpoints after two minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child process, which has not been waited for.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let status = child.0.wait().unwrap();
    let e = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{e}");
    assert!(
        e.contains(&format!(
            "interrupted: the run in {} keeps checkpoint",
            run.display()
        )) && e.contains(&format!(
            "continue it with `edco train --resume {}`",
            run.display()
        )),
        "{e}"
    );
}

#[test]
fn checks_come_before_the_expensive_work() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, config_text(model.path(), d, "")).unwrap();
    let c = cfg.to_str().unwrap();
    // A dry run refuses what the run would: a missing model, an occupied directory.
    let o = edco_in(
        d,
        &[
            "train",
            "--config",
            c,
            "--dry-run",
            "--set",
            "model.source=\"./no-such-model\"",
        ],
    );
    refused(
        &o,
        "`model.source`: model `./no-such-model`: no such file or directory",
    );
    std::fs::create_dir(d.join("run")).unwrap();
    std::fs::write(d.join("run/x"), "x").unwrap();
    let o = edco_in(d, &["train", "--config", c, "--dry-run"]);
    refused(&o, "holds files that are not a run's");
    std::fs::remove_dir_all(d.join("run")).unwrap();
    let o = edco_in(d, &["train", "--config", c, "--dry-run"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    ok(&o);
    assert!(out.contains("# model: the model directory"), "{out}");
    assert!(!d.join("run").exists());
    // estimate-entropy finds an output it cannot write before it loads the model.
    write_pool(&d.join("pool.jsonl"), 3);
    std::fs::write(d.join("blocker"), "a file").unwrap();
    let o = edco_in(
        d,
        &[
            "estimate-entropy",
            "--model",
            "no-such-model",
            "--data",
            "pool.jsonl",
            "--out",
            "blocker/s.jsonl",
        ],
    );
    refused(&o, "--out blocker/s.jsonl: creating blocker");
}
