//! `edco compare`: does the curriculum help, at the same budget? A study runs a set of arms
//! (a curriculum strategy, with any setting overrides) times a set of seeds from one training
//! config. Every arm trains the same number of rounds, samples per round and optimizer steps
//! (checked before any run starts), so only which samples are trained on differs. Each
//! (arm, seed) is a normal run directory under `runs/`: a study that was stopped resumes the
//! unfinished runs and leaves the finished ones alone. The report (`report.md`, `report.json`
//! and two pictures) is computed from the runs' own `metrics.jsonl` files.

use crate::atomic_file::{write_atomic, write_new};
use crate::config::Config;
use crate::resume::Fingerprint;
use crate::run_dir::read_metrics;
use crate::{plot, stats};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One arm: a name and the settings it overrides in the study's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub name: String,
    pub sets: Vec<String>,
}

impl Arm {
    /// `edco`, `random`, `length`, `perplexity`, `entropy` (a strategy, nothing else changed),
    /// or `NAME:KEY=VALUE[,KEY=VALUE...]`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, sets) = match spec.split_once(':') {
            Some((name, sets)) => (name, sets.split(',').map(str::to_string).collect()),
            None => (spec, vec![format!("curriculum.strategy=\"{spec}\"")]),
        };
        let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            bail!(
                "arm `{spec}`: its name must start with a letter or digit and hold only letters, \
                 digits, `-`, `_` or `.` (it names a folder), as in `random` or \
                 `edco-drop:curriculum.drop_top_fraction=0.1`"
            );
        }
        for set in &sets {
            let Some((key, _)) = set.split_once('=') else {
                bail!("arm `{spec}`: expected NAME:KEY=VALUE[,KEY=VALUE...]");
            };
            // The section, also when it is set whole (`entropy={samples=4}`).
            let key = key.trim();
            let section = key.split('.').next().unwrap_or(key).trim();
            if !ARM_SECTIONS.contains(&section) {
                bail!(
                    "arm `{name}`: sets `{key}`; an arm may change only what is selected and how \
                     it is scored (`curriculum.*` and `entropy.*`), so that the arms of a study \
                     differ in nothing else; set other settings for the whole study with --set \
                     (but run.seed and run.output_dir, which the study sets for each run)"
                );
            }
        }
        Ok(Self {
            name: name.to_string(),
            sets,
        })
    }
}

/// The config sections an arm may set: which samples are selected, and how they are scored.
/// Everything else (the data, the evaluation, the model, the method and its optimizer) every
/// arm of a study shares, so that the arms differ only in what they train on.
const ARM_SECTIONS: &[&str] = &["curriculum", "entropy"];

/// The settings the study gives each run itself (also set whole, as `run={...}`).
const STUDY_SETS: &[&str] = &["run", "run.seed", "run.output_dir"];

/// The most seeds a study runs.
pub const MAX_SEEDS: usize = 1000;

/// What a study is: recorded in `study.json` when it starts, and checked when it is run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    /// The training config every arm starts from.
    pub config: PathBuf,
    /// Overrides for every arm, applied before the arm's own.
    pub sets: Vec<String>,
    pub arms: Vec<Arm>,
    pub seeds: Vec<u64>,
}

pub const STUDY: &str = "study.json";

impl Study {
    /// The config of `arm` at `seed`, writing its run to `dir`, on the hub `commit` the study
    /// pinned its model to (`None`: a local model).
    fn config_of(&self, arm: &Arm, seed: u64, dir: &Path, commit: Option<&str>) -> Result<Config> {
        let mut sets = self.sets.clone();
        sets.extend(arm.sets.iter().cloned());
        if let Some(commit) = commit {
            sets.push(format!("model.revision={}", toml::Value::from(commit)));
        }
        sets.push(format!("run.seed={seed}"));
        let dir = dir.to_str().context("the study's path is not UTF-8")?;
        sets.push(format!("run.output_dir={}", toml::Value::from(dir)));
        Config::load(&self.config, &sets).with_context(|| format!("arm `{}`", arm.name))
    }

    fn run_dir(out: &Path, arm: &Arm, seed: u64) -> PathBuf {
        out.join("runs")
            .join(&arm.name)
            .join(format!("seed-{seed}"))
    }

    /// Refuses a study whose arms would not train at the same budget, before anything runs.
    fn check_budget(&self, out: &Path) -> Result<()> {
        let mut first: Option<(String, (usize, usize, usize))> = None;
        for arm in &self.arms {
            let cfg = self.config_of(arm, self.seeds[0], &Self::run_dir(out, arm, 0), None)?;
            let plan = crate::trainer::plan(&cfg)?;
            let budget = (cfg.curriculum.rounds, plan.per_round, plan.steps_per_round);
            match &first {
                None => first = Some((arm.name.clone(), budget)),
                Some((name, b)) if *b != budget => bail!(
                    "arm `{}` trains {} rounds of {} samples in {} steps each, arm `{name}` {} of \
                     {} in {}: a study compares arms at the same budget; set the rounds and the \
                     selection size for the whole study, not per arm",
                    arm.name,
                    budget.0,
                    budget.1,
                    budget.2,
                    b.0,
                    b.1,
                    b.2
                ),
                _ => {}
            }
        }
        Ok(())
    }

    /// The commit a hub model's revision resolves to now (which may download it, as a run
    /// would); `None` for a model on this machine.
    fn hub_commit(&self, out: &Path) -> Result<Option<String>> {
        use crate::model::io::hub;
        let arm = &self.arms[0];
        let cfg = self.config_of(arm, self.seeds[0], &Self::run_dir(out, arm, 0), None)?;
        let m = cfg.resolve()?.model;
        if Path::new(&m.source).exists() {
            return Ok(None);
        }
        let files = hub::resolve(&m.source, m.revision.as_deref()).context("`model.source`")?;
        Ok(hub::commit_of(&m.source, &files))
    }

    /// Refuses a study that cannot be run as given, before anything is written.
    fn check(&self) -> Result<()> {
        if self.arms.is_empty() || self.seeds.is_empty() {
            bail!("a study needs at least one arm and one seed");
        }
        if self.seeds.len() > MAX_SEEDS {
            bail!(
                "{} seeds: a study runs at most {MAX_SEEDS} (every seed is a run per arm)",
                self.seeds.len()
            );
        }
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        if let Some(w) = seeds.windows(2).find(|w| w[0] == w[1]) {
            bail!("seed {} is given twice: each seed is one run per arm", w[0]);
        }
        let mut names: Vec<&str> = self.arms.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("arm `{}` is given twice", w[0]);
        }
        for set in &self.sets {
            let key = set.split_once('=').map_or(set.as_str(), |(k, _)| k).trim();
            if STUDY_SETS.contains(&key) {
                bail!(
                    "--set {set}: the study sets `{key}` for each run itself (runs/ARM/seed-S, \
                     with --seeds); choose the seeds with --seeds and the place with --out"
                );
            }
        }
        Ok(())
    }
}

/// Runs the study into `out` (new, empty, or this study's own directory), then reports.
pub fn run(study: &Study, out: &Path) -> Result<Report> {
    study.check()?;
    // The budget first: a study refused for it leaves no directory behind.
    study.check_budget(out)?;
    let commit = claim(study, out)?;
    same_inputs(study, out)?;
    base_pool(study, out, commit.as_deref())?;
    let total = study.arms.len() * study.seeds.len();
    let mut k = 0;
    for seed in &study.seeds {
        for arm in &study.arms {
            k += 1;
            let dir = Study::run_dir(out, arm, *seed);
            let cfg = study.config_of(arm, *seed, &dir, commit.as_deref())?;
            if finished(&dir, cfg.curriculum.rounds) {
                eprintln!("study: {k}/{total} {} seed {seed}: done", arm.name);
                continue;
            }
            eprintln!("study: {k}/{total} {} seed {seed}", arm.name);
            let started = dir.join("config.toml").is_file();
            if !started {
                same_data(study, out, &cfg)?;
            }
            let cfg = if started {
                Config::load(&dir.join("config.toml"), &[])?
            } else {
                cfg
            };
            crate::trainer::run(&cfg, started.then_some(dir.as_path()), false)
                .with_context(|| format!("arm `{}`, seed {seed} ({})", arm.name, dir.display()))?;
            // A data file or model that changed since the study began shows in the fingerprint
            // of the first run started after: stop there, not after the rest has run.
            same_inputs(study, out)?;
        }
    }
    let report = Report::of(study, out)?;
    report.write(out)?;
    Ok(report)
}

/// The base model's result on every pool sample (one JSON line each, as the runs'
/// `eval/round_NNN.jsonl`), evaluated once per study: how the samples each arm picks fare before
/// any training, against the pool.
pub const BASE_POOL: &str = "base/pool.jsonl";

/// Evaluates the base model on the pool into [`BASE_POOL`], unless a study run before did.
fn base_pool(study: &Study, out: &Path, commit: Option<&str>) -> Result<()> {
    let path = out.join(BASE_POOL);
    if path.is_file() {
        return Ok(());
    }
    let (arm, seed) = (&study.arms[0], study.seeds[0]);
    let cfg = study.config_of(arm, seed, &Study::run_dir(out, arm, seed), commit)?;
    eprintln!("study: the base model on the pool");
    let items =
        crate::trainer::evaluate_pool(&cfg).context("evaluating the base model on the pool")?;
    let mut text = String::new();
    for item in &items {
        text.push_str(&serde_json::to_string(item)?);
        text.push('\n');
    }
    let dir = out.join("base");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&path, text.as_bytes())
}

/// Whether the base model got each pool sample right (greedy answer), by id, from
/// [`BASE_POOL`]; empty when the study has none (begun by an earlier edco, or not yet run).
fn read_base_pool(out: &Path) -> BTreeMap<String, bool> {
    right_by_id(&out.join(BASE_POOL))
}

/// The `correct` of each line of a per-sample evaluation file, by id (empty when unreadable).
fn right_by_id(path: &Path) -> BTreeMap<String, bool> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| Some((l["id"].as_str()?.to_string(), l["correct"].as_bool()?)))
        .collect()
}

/// What `study.json` keeps: the study, its config file's text as it was, and the hub commit
/// its model was pinned to.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    study: Study,
    config_text: String,
    /// The commit a hub model's revision resolved to when the study began: every run of the
    /// study, begun then or later, reads that one, even if the branch has moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_commit: Option<String>,
}

/// Makes `out` this study's directory: a new or empty one gets `study.json`; one that has it
/// must hold the same study, from the same config text. Returns the hub commit the study's
/// runs read.
fn claim(study: &Study, out: &Path) -> Result<Option<String>> {
    let path = out.join(STUDY);
    let config_text = std::fs::read_to_string(&study.config)
        .with_context(|| format!("reading config {}", study.config.display()))?;
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let then: Record = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed", path.display()))?;
        // The same study is the same config text, arms, seeds and settings; the config may be
        // named another way (`c.toml`, `./c.toml`, from another directory) or have moved.
        let same = Study {
            config: then.study.config.clone(),
            ..study.clone()
        } == then.study;
        if same && then.config_text != config_text {
            bail!(
                "{}: the config {} changed since the study began ({} keeps its text); restore \
                 it to finish the study, or choose a new --out",
                out.display(),
                study.config.display(),
                path.display()
            );
        }
        if !same {
            bail!(
                "{}: the study there was started with other arms, seeds or settings, or from \
                 config {} ({}); run it as it was to finish it, or choose a new --out for this \
                 one",
                out.display(),
                then.study.config.display(),
                path.display()
            );
        }
        return Ok(then.model_commit);
    }
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        bail!(
            "--out {}: already exists and is not a study (no {STUDY}); choose a new or empty \
             directory",
            out.display()
        );
    }
    let now = Record {
        study: study.clone(),
        config_text,
        model_commit: study.hub_commit(out)?,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if let Err(e) = write_new(&path, serde_json::to_string_pretty(&now)?.as_bytes()) {
        let raced = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists);
        if raced {
            bail!(
                "{}: another edco compare began a study there just now; run this one into \
                 another --out",
                out.display()
            );
        }
        return Err(e);
    }
    Ok(now.model_commit)
}

/// Refuses a study whose runs trained on different model files or data (each run's
/// `fingerprint.json`): their accuracies would not be comparable.
fn same_inputs(study: &Study, out: &Path) -> Result<()> {
    let mut first: Option<(PathBuf, Fingerprint)> = None;
    for arm in &study.arms {
        for &seed in &study.seeds {
            let dir = Study::run_dir(out, arm, seed);
            let Some(f) = Fingerprint::load(&dir)? else {
                continue;
            };
            let Some((dir0, f0)) = &first else {
                first = Some((dir, f));
                continue;
            };
            let differs = if !f.model.is_empty() && !f0.model.is_empty() && f.model != f0.model {
                Some("model files")
            } else if f.train != f0.train {
                Some("data.train")
            } else if f.eval != f0.eval {
                Some("data.eval")
            } else {
                None
            };
            if let Some(what) = differs {
                bail!(
                    "{} and {}: the runs read different {what} (their {} differ): a file changed \
                     while the study ran, and a study compares runs on one model and one data \
                     set; restore it, or begin a new study (a new --out)",
                    dir0.display(),
                    dir.display(),
                    crate::resume::FINGERPRINT
                );
            }
        }
    }
    Ok(())
}

/// Refuses to start a run of the study on data files other than those its runs read so far:
/// checked before the run starts, where [`same_inputs`] can tell only once it has run.
fn same_data(study: &Study, out: &Path, cfg: &Config) -> Result<()> {
    for arm in &study.arms {
        for &seed in &study.seeds {
            let dir = Study::run_dir(out, arm, seed);
            let Some(f) = Fingerprint::load(&dir)? else {
                continue;
            };
            let files = [
                ("data.train", &cfg.data.train, Some(&f.train)),
                ("data.eval", &cfg.data.eval, f.eval.as_ref()),
            ];
            for (key, path, then) in files {
                let Some(then) = then else { continue };
                if crate::resume::data_print(path, then.samples)? != *then {
                    bail!(
                        "{key} {}: not the file the study's runs read ({} records it): it \
                         changed while the study ran, and a study compares runs on one data \
                         set; restore it, or begin a new study (a new --out)",
                        path.display(),
                        dir.join(crate::resume::FINGERPRINT).display()
                    );
                }
            }
            return Ok(());
        }
    }
    Ok(())
}

/// Whether the run in `dir` finished: it saved the checkpoint of its last round (after logging
/// it), or, where its checkpoints were removed (a finished study kept for its records, without
/// the weights), its metrics log the last round.
fn finished(dir: &Path, rounds: usize) -> bool {
    if crate::checkpoint::checkpoints_dir(dir).exists() {
        return crate::checkpoint::latest_intact(dir)
            .is_ok_and(|(_, state, _)| state.next_round() > rounds);
    }
    read_metrics(dir).is_ok_and(|m| {
        m.iter()
            .any(|l| l["kind"] == "round" && l["round"].as_u64() == Some(rounds as u64))
    })
}

/// One run as the report reads it from its `metrics.jsonl`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunRecord {
    pub seed: u64,
    /// Held-out accuracy (greedy answer) before training (round 0) and after each round.
    pub accuracy: Vec<Option<f64>>,
    /// The same by option likelihood (multiple-choice sets).
    pub option_accuracy: Vec<Option<f64>>,
    /// Seconds scoring and training, per round.
    pub score_seconds: Vec<f64>,
    pub train_seconds: Vec<f64>,
    pub steps: usize,
    pub tokens: u64,
    /// GRPO: the mean reward of a step's completions, and the share of its groups whose
    /// rewards were all equal (no gradient), averaged over the run's steps.
    pub reward: Option<f64>,
    pub zero_std_fraction: Option<f64>,
    /// Per round: how many of the selected samples had not been trained on before, the mean
    /// score of the selected ones, and the mean score of the pool they were picked from (the
    /// scores: what the strategy ranks by, when it scores).
    pub new: Vec<Option<f64>>,
    pub picked_score: Vec<Option<f64>>,
    pub pool_score: Vec<Option<f64>>,
    /// Per round: the share of the selected samples the base model got right (see
    /// [`BASE_POOL`]; absent without it).
    pub picked_base_accuracy: Vec<Option<f64>>,
    /// Whether each held-out sample's greedy answer after the last round was right, by id (the
    /// run's `eval/round_NNN.jsonl`; empty where the run has none).
    #[serde(skip)]
    pub final_items: BTreeMap<String, bool>,
    /// The machines its rounds were timed on (more than one: resumed elsewhere), as the round
    /// lines name them; empty for runs from before they did.
    pub machines: Vec<String>,
}

impl RunRecord {
    /// `base`: the base model's result on each pool sample, by id (see [`BASE_POOL`]).
    fn read(dir: &Path, seed: u64, base: &BTreeMap<String, bool>) -> Result<Self> {
        let m = read_metrics(dir)?;
        let eval_of = |l: &serde_json::Value, key: &str| l["eval"][key].as_f64();
        let before = m.iter().find(|l| l["kind"] == "eval");
        let rounds: Vec<&serde_json::Value> = m.iter().filter(|l| l["kind"] == "round").collect();
        let series = |key: &str| -> Vec<Option<f64>> {
            std::iter::once(before.and_then(|l| eval_of(l, key)))
                .chain(rounds.iter().map(|l| eval_of(l, key)))
                .collect()
        };
        let seconds = |key: &str| -> Vec<f64> {
            rounds
                .iter()
                .map(|l| l[key].as_f64().unwrap_or(0.0))
                .collect()
        };
        let steps: Vec<&serde_json::Value> = m.iter().filter(|l| l["kind"] == "step").collect();
        let step_mean = |key: &str| {
            let v: Vec<f64> = steps.iter().filter_map(|l| l[key].as_f64()).collect();
            (!v.is_empty()).then(|| stats::mean(&v))
        };
        // Each round's selection (its curriculum file), read once for what the report says of it.
        let picks: Vec<Option<Vec<serde_json::Value>>> = rounds
            .iter()
            .map(|l| {
                let round = l["round"].as_u64()?;
                let path = dir.join(format!("curriculum/round_{round:03}.jsonl"));
                let text = std::fs::read_to_string(path).ok()?;
                Some(
                    text.lines()
                        .filter_map(|l| serde_json::from_str(l).ok())
                        .collect(),
                )
            })
            .collect();
        let mean_over_picks = |value: &dyn Fn(&serde_json::Value) -> Option<f64>| {
            picks
                .iter()
                .map(|p| {
                    let v: Vec<f64> = p.as_ref()?.iter().filter_map(value).collect();
                    (!v.is_empty()).then(|| stats::mean(&v))
                })
                .collect::<Vec<_>>()
        };
        let picked_score = mean_over_picks(&|l| l["score"].as_f64().filter(|s| s.is_finite()));
        let picked_base_accuracy =
            mean_over_picks(&|l| base.get(l["id"].as_str()?).map(|&r| f64::from(u8::from(r))));
        let final_items = rounds
            .last()
            .and_then(|l| l["round"].as_u64())
            .map(|round| right_by_id(&dir.join(format!("eval/round_{round:03}.jsonl"))))
            .unwrap_or_default();
        let mut machines: Vec<String> = Vec::new();
        for l in &rounds {
            let Some(machine) = l["machine"].as_str() else {
                continue;
            };
            let on = match l["device"].as_str() {
                Some(d) if d != "cpu" => format!("{machine}, {d}"),
                _ => machine.to_string(),
            };
            if !machines.contains(&on) {
                machines.push(on);
            }
        }
        Ok(Self {
            seed,
            final_items,
            machines,
            picked_base_accuracy,
            new: rounds.iter().map(|l| l["new"].as_f64()).collect(),
            picked_score,
            pool_score: rounds
                .iter()
                .map(|l| l["pool_scores"]["mean"].as_f64())
                .collect(),
            accuracy: series("accuracy"),
            option_accuracy: series("option_accuracy"),
            score_seconds: seconds("score_seconds"),
            train_seconds: seconds("train_seconds"),
            steps: steps.len(),
            tokens: steps.iter().filter_map(|l| l["tokens"].as_u64()).sum(),
            reward: step_mean("reward_mean"),
            zero_std_fraction: step_mean("zero_std_fraction"),
        })
    }
}

/// Mean and (sample) standard deviation over seeds, and how many seeds had a value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Self> {
        (!values.is_empty()).then(|| Self {
            mean: stats::mean(values),
            std: stats::sample_std_dev(values),
            n: values.len(),
        })
    }
}

/// An arm's difference to `random` in final accuracy, paired by seed, with a 95% confidence
/// interval (Student's t over the seeds' differences).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paired {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// An arm's difference to `random` in final accuracy (greedy answer) over the held-out samples
/// both evaluated, with a 95% interval from a bootstrap that resamples the seeds and the
/// held-out samples (each with replacement, [`RESAMPLES`] times). Where the seed-paired
/// interval of [`Paired`] treats the held-out set as fixed, this one also counts that it is a
/// sample: on 300 items one item is a third of a point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Resampled {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub seeds: usize,
    pub items: usize,
}

/// Bootstrap resamples of [`Resampled`].
pub const RESAMPLES: usize = 10_000;

/// An arm's results over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    pub name: String,
    pub sets: Vec<String>,
    /// Per round (0: before training), over seeds.
    pub accuracy: Vec<Option<Spread>>,
    pub option_accuracy: Vec<Option<Spread>>,
    /// Final accuracy minus random's, paired by seed (absent for random itself, or without it).
    pub vs_random: Option<Paired>,
    pub vs_random_option: Option<Paired>,
    /// The same difference in final accuracy, with an interval over seeds and held-out items.
    pub vs_random_items: Option<Resampled>,
    /// Per run: seconds scoring, training; optimizer steps; training tokens.
    pub score_seconds: Spread,
    pub train_seconds: Spread,
    pub steps: Spread,
    pub tokens: Spread,
    /// GRPO: reward per step and the share of groups without reward variance (see
    /// [`RunRecord`]), over seeds.
    pub reward: Option<Spread>,
    pub zero_std_fraction: Option<Spread>,
    /// Per round (1 onwards), over seeds: see [`RunRecord`].
    pub new: Vec<Option<Spread>>,
    pub picked_score: Vec<Option<Spread>>,
    pub pool_score: Vec<Option<Spread>>,
    pub picked_base_accuracy: Vec<Option<Spread>>,
    pub runs: Vec<RunRecord>,
}

impl ArmReport {
    /// Mean accuracy (%) after each round against the mean wall time spent until then, scoring
    /// and training (round 0 at 0 s).
    fn accuracy_by_time(&self) -> Vec<(f64, f64)> {
        let mut elapsed = 0.0;
        let mut points = Vec::new();
        for (k, s) in self.accuracy.iter().enumerate() {
            if k > 0 {
                let per_run: Vec<f64> = self
                    .runs
                    .iter()
                    .map(|r| {
                        r.score_seconds.get(k - 1).unwrap_or(&0.0)
                            + r.train_seconds.get(k - 1).unwrap_or(&0.0)
                    })
                    .collect();
                elapsed += stats::mean(&per_run);
            }
            if let Some(s) = s {
                points.push((elapsed, 100.0 * s.mean));
            }
        }
        points
    }
}

/// The study's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub study: Study,
    /// Runs finished, of the arms times seeds the study plans: the report is over the
    /// finished ones (all of them once the study has run; fewer while it runs).
    pub finished: usize,
    pub planned: usize,
    /// The share of the pool the base model gets right (see [`BASE_POOL`]).
    pub pool_base_accuracy: Option<f64>,
    pub arms: Vec<ArmReport>,
}

/// The report of the runs of the study in `out` finished so far, running nothing: what a study
/// says while it runs, or after it was stopped. Written into `out` as [`run`] writes it.
pub fn report_so_far(study: &Study, out: &Path) -> Result<Report> {
    study.check()?;
    if !out.join(STUDY).is_file() {
        bail!(
            "{}: not a study (no {STUDY}); `edco compare` without --report-only runs one there",
            out.display()
        );
    }
    claim(study, out)?;
    let report = Report::of(study, out)?;
    report.write(out)?;
    Ok(report)
}

impl Report {
    /// Reads every finished run of the study in `out` and computes the report.
    pub fn of(study: &Study, out: &Path) -> Result<Self> {
        same_inputs(study, out)?;
        let base = read_base_pool(out);
        let mut runs = Vec::new();
        for arm in &study.arms {
            let mut records = Vec::new();
            for &seed in &study.seeds {
                let dir = Study::run_dir(out, arm, seed);
                let rounds = study.config_of(arm, seed, &dir, None)?.curriculum.rounds;
                if finished(&dir, rounds) {
                    records.push(RunRecord::read(&dir, seed, &base)?);
                }
            }
            runs.push(records);
        }
        let random = study.arms.iter().position(|a| a.name == "random");
        let arms = study
            .arms
            .iter()
            .zip(&runs)
            .enumerate()
            .map(|(i, (arm, records))| {
                let per_round = |pick: fn(&RunRecord) -> &Vec<Option<f64>>| {
                    let rounds = records.iter().map(|r| pick(r).len()).max().unwrap_or(0);
                    (0..rounds)
                        .map(|k| {
                            let v: Vec<f64> =
                                records.iter().filter_map(|r| *pick(r).get(k)?).collect();
                            Spread::of(&v)
                        })
                        .collect::<Vec<_>>()
                };
                let paired = |pick: fn(&RunRecord) -> &Vec<Option<f64>>| {
                    let base = &runs[random.filter(|&r| r != i)?];
                    paired_final(records, base, pick)
                };
                let total = |f: fn(&RunRecord) -> f64| {
                    let v: Vec<f64> = records.iter().map(f).collect();
                    Spread::of(&v).unwrap_or(Spread {
                        mean: 0.0,
                        std: 0.0,
                        n: 0,
                    })
                };
                let grpo = |f: fn(&RunRecord) -> Option<f64>| {
                    let v: Vec<f64> = records.iter().filter_map(f).collect();
                    Spread::of(&v)
                };
                ArmReport {
                    name: arm.name.clone(),
                    sets: arm.sets.clone(),
                    accuracy: per_round(|r| &r.accuracy),
                    option_accuracy: per_round(|r| &r.option_accuracy),
                    vs_random: paired(|r| &r.accuracy),
                    vs_random_option: paired(|r| &r.option_accuracy),
                    vs_random_items: random
                        .filter(|&r| r != i)
                        .and_then(|r| resampled_final(records, &runs[r])),
                    score_seconds: total(|r| r.score_seconds.iter().sum()),
                    train_seconds: total(|r| r.train_seconds.iter().sum()),
                    steps: total(|r| r.steps as f64),
                    tokens: total(|r| r.tokens as f64),
                    reward: grpo(|r| r.reward),
                    zero_std_fraction: grpo(|r| r.zero_std_fraction),
                    new: per_round(|r| &r.new),
                    picked_score: per_round(|r| &r.picked_score),
                    pool_score: per_round(|r| &r.pool_score),
                    picked_base_accuracy: per_round(|r| &r.picked_base_accuracy),
                    runs: records.clone(),
                }
            })
            .collect();
        let right = base.values().filter(|&&r| r).count();
        Ok(Self {
            study: study.clone(),
            pool_base_accuracy: (!base.is_empty()).then(|| right as f64 / base.len() as f64),
            finished: runs.iter().map(Vec::len).sum(),
            planned: study.arms.len() * study.seeds.len(),
            arms,
        })
    }

    /// `report.json`, `report.md`, `accuracy.svg` and `accuracy_vs_time.svg` in `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        write_atomic(
            &out.join("report.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        write_atomic(&out.join("report.md"), self.markdown().as_bytes())?;
        let mut by_round = Vec::new();
        let mut by_time = Vec::new();
        for a in &self.arms {
            let rounds = a.accuracy.iter().enumerate();
            let spreads: Vec<(f64, Spread)> = rounds
                .filter_map(|(k, s)| Some((k as f64, (*s)?)))
                .collect();
            by_round.push(plot::Line {
                name: &a.name,
                points: spreads.iter().map(|(k, s)| (*k, 100.0 * s.mean)).collect(),
                band: spreads
                    .iter()
                    .filter(|(_, s)| s.n > 1)
                    .map(|(k, s)| (*k, 100.0 * (s.mean - s.std), 100.0 * (s.mean + s.std)))
                    .collect(),
            });
            by_time.push((a.name.as_str(), a.accuracy_by_time()));
        }
        plot::lines_with_bands(
            &out.join("accuracy.svg"),
            "Held-out accuracy per round (mean, and one sd over seeds)",
            "round",
            "accuracy (%)",
            &by_round,
        )?;
        plot::lines(
            &out.join("accuracy_vs_time.svg"),
            "Held-out accuracy against time spent (scoring and training)",
            "seconds",
            "accuracy (%)",
            &by_time,
        )
    }

    /// The tables a person reads.
    pub fn markdown(&self) -> String {
        let pct = |s: &Option<Spread>| match s {
            Some(s) if s.n > 1 => format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.std),
            Some(s) => format!("{:.1}", 100.0 * s.mean),
            None => "n/a".into(),
        };
        let diff = |p: &Option<Paired>| match p {
            Some(p) if p.n > 1 => format!(
                "{:+.1} [{:+.1}, {:+.1}]",
                100.0 * p.mean,
                100.0 * p.low,
                100.0 * p.high
            ),
            Some(p) => format!("{:+.1}", 100.0 * p.mean),
            None => "".into(),
        };
        let rounds = self
            .arms
            .iter()
            .map(|a| a.accuracy.len())
            .max()
            .unwrap_or(0);
        let mut md = String::new();
        md.push_str(&format!(
            "# Study: {} arms x {} seeds ({})\n\n",
            self.arms.len(),
            self.study.seeds.len(),
            self.study.config.display()
        ));
        if self.finished < self.planned {
            md.push_str(&format!(
                "**{} of {} runs finished**: a study in progress, reported over the seeds each \
                 arm has finished (differences to random over the seeds both have).\n\n",
                self.finished, self.planned
            ));
        }
        for (title, pick, vs) in [
            (
                "Held-out accuracy (greedy answer), %",
                (|a: &ArmReport| &a.accuracy) as fn(&ArmReport) -> &Vec<Option<Spread>>,
                (|a: &ArmReport| &a.vs_random) as fn(&ArmReport) -> &Option<Paired>,
            ),
            (
                "Held-out accuracy (option likelihood), %",
                |a: &ArmReport| &a.option_accuracy,
                |a: &ArmReport| &a.vs_random_option,
            ),
        ] {
            if self
                .arms
                .iter()
                .all(|a| pick(a).iter().all(Option::is_none))
            {
                continue;
            }
            md.push_str(&format!("## {title}\n\n| arm |"));
            for k in 0..rounds {
                md.push_str(&format!(" round {k} |"));
            }
            md.push_str(" final vs random (95% CI) |\n|---|");
            md.push_str(&"---:|".repeat(rounds + 1));
            md.push('\n');
            for a in &self.arms {
                md.push_str(&format!("| {} |", a.name));
                for k in 0..rounds {
                    md.push_str(&format!(" {} |", pct(&pick(a).get(k).copied().flatten())));
                }
                md.push_str(&format!(" {} |\n", diff(vs(a))));
            }
            md.push('\n');
        }
        md.push_str(&self.resampled_table());
        md.push_str(
            "## Budget and time per run (mean over seeds)\n\n| arm | optimizer steps | training \
             tokens | scoring s | training s |\n|---|---:|---:|---:|---:|\n",
        );
        for a in &self.arms {
            if a.steps.n == 0 {
                md.push_str(&format!("| {} | n/a | n/a | n/a | n/a |\n", a.name));
                continue;
            }
            md.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.1} | {:.1} |\n",
                a.name, a.steps.mean, a.tokens.mean, a.score_seconds.mean, a.train_seconds.mean
            ));
        }
        md.push_str(&self.machines());
        md.push_str(&self.selection_table());
        if self.arms.iter().any(|a| a.reward.is_some()) {
            md.push_str(
                "\n## GRPO: reward per step, and groups without a learning signal\n\n| arm | mean \
                 reward per step | groups with equal rewards, % |\n|---|---:|---:|\n",
            );
            let plain = |s: &Option<Spread>, scale: f64| match s {
                Some(s) if s.n > 1 => format!("{:.3} ± {:.3}", scale * s.mean, scale * s.std),
                Some(s) => format!("{:.3}", scale * s.mean),
                None => "n/a".into(),
            };
            for a in &self.arms {
                md.push_str(&format!(
                    "| {} | {} | {} |\n",
                    a.name,
                    plain(&a.reward, 1.0),
                    plain(&a.zero_std_fraction, 100.0)
                ));
            }
            md.push_str(
                "\nA group whose completions all get the same reward has zero advantage and gives \
                 no gradient; a curriculum that picks what the model is unsure of should waste \
                 fewer.\n",
            );
        }
        md.push_str(
            "\nRound 0 is before training. ± is one standard deviation over seeds; the \
             difference to random is paired by seed, with a 95% interval from Student's t.\n",
        );
        md
    }
}

impl Report {
    /// Which machines the times were taken on, and how many runs on each.
    fn machines(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for run in self.arms.iter().flat_map(|a| &a.runs) {
            for m in &run.machines {
                match counts.iter_mut().find(|(n, _)| n == m) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((m, 1)),
                }
            }
        }
        if counts.is_empty() {
            return String::new();
        }
        let list: Vec<String> = counts
            .iter()
            .map(|(m, c)| format!("{m} ({c} run{})", if *c == 1 { "" } else { "s" }))
            .collect();
        let caveat = if counts.len() > 1 {
            "; times from different machines do not compare"
        } else {
            ""
        };
        format!("\nTimed on: {}{caveat}.\n", list.join("; "))
    }

    /// The final difference to random with the held-out set counted as a sample too.
    fn resampled_table(&self) -> String {
        let rows: Vec<(&str, Resampled)> = self
            .arms
            .iter()
            .filter_map(|a| Some((a.name.as_str(), a.vs_random_items?)))
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut md = format!(
            "## Final accuracy (greedy answer) against random, seeds and held-out samples \
             resampled\n\nThe interval above treats the held-out set as fixed; this one also \
             draws the held-out samples again ({RESAMPLES} bootstrap resamples of seeds and \
             samples), so it answers for items like these, not only for these items.\n\n| arm | \
             difference, points | 95% interval | seeds | samples |\n|---|---:|---|---:|---:|\n"
        );
        for (name, r) in rows {
            md.push_str(&format!(
                "| {name} | {:+.1} | [{:+.1}, {:+.1}] | {} | {} |\n",
                100.0 * r.mean,
                100.0 * r.low,
                100.0 * r.high,
                r.seeds,
                r.items
            ));
        }
        md.push('\n');
        md
    }

    /// What each arm selected, round by round: how many picks were new, and the mean score of
    /// the picks against the pool's (where the strategy scores).
    fn selection_table(&self) -> String {
        let rounds = self.arms.iter().map(|a| a.new.len()).max().unwrap_or(0);
        if rounds == 0 {
            return String::new();
        }
        let mut md = String::from(
            "\n## What each arm selects (mean over seeds)\n\nPer round: samples not trained on \
             before, the mean score of the selected samples against the pool's, and the share of \
             them the base model gets right",
        );
        match self.pool_base_accuracy {
            Some(p) => md.push_str(&format!(" (of the whole pool: {:.1}%)", 100.0 * p)),
            None => md.push_str(" (where the study evaluated the base model on the pool)"),
        }
        md.push_str(".\n\n| arm |");
        for k in 1..=rounds {
            md.push_str(&format!(" round {k} |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(rounds));
        md.push('\n');
        let mean = |v: &[Option<Spread>], k: usize| v.get(k).copied().flatten().map(|s| s.mean);
        for a in &self.arms {
            md.push_str(&format!("| {} |", a.name));
            for k in 0..rounds {
                let new = mean(&a.new, k).map_or("n/a".into(), |n| format!("{n:.0} new"));
                let scores = match (mean(&a.picked_score, k), mean(&a.pool_score, k)) {
                    (Some(p), Some(q)) => format!(", {p:.3} vs {q:.3}"),
                    _ => String::new(),
                };
                let base = mean(&a.picked_base_accuracy, k)
                    .map_or(String::new(), |b| format!(", {:.0}% right", 100.0 * b));
                md.push_str(&format!(" {new}{scores}{base} |"));
            }
            md.push('\n');
        }
        md
    }
}

/// The final-round difference of `arm` to `base`, paired by seed.
fn paired_final(
    arm: &[RunRecord],
    base: &[RunRecord],
    pick: fn(&RunRecord) -> &Vec<Option<f64>>,
) -> Option<Paired> {
    let d: Vec<f64> = arm
        .iter()
        .filter_map(|r| {
            let b = base.iter().find(|b| b.seed == r.seed)?;
            Some((*pick(r).last()?)? - (*pick(b).last()?)?)
        })
        .collect();
    let n = d.len();
    let mean = (n > 0).then(|| stats::mean(&d))?;
    let half = if n > 1 {
        t_975(n - 1) * stats::sample_std_dev(&d) / (n as f64).sqrt()
    } else {
        f64::NAN
    };
    Some(Paired {
        mean,
        low: mean - half,
        high: mean + half,
        n,
    })
}

/// The final-round difference of `arm` to `base` in greedy accuracy, over the seeds both ran and
/// the held-out samples every such pair evaluated, resampling seeds and samples (see
/// [`Resampled`]). The bootstrap's stream is fixed, so a report computed again is the same.
fn resampled_final(arm: &[RunRecord], base: &[RunRecord]) -> Option<Resampled> {
    let pairs: Vec<(&RunRecord, &RunRecord)> = arm
        .iter()
        .filter_map(|r| Some((r, base.iter().find(|b| b.seed == r.seed)?)))
        .filter(|(r, b)| !r.final_items.is_empty() && !b.final_items.is_empty())
        .collect();
    let (first, _) = pairs.first()?;
    let ids: Vec<&String> = first
        .final_items
        .keys()
        .filter(|id| {
            pairs
                .iter()
                .all(|(r, b)| r.final_items.contains_key(*id) && b.final_items.contains_key(*id))
        })
        .collect();
    if ids.is_empty() {
        return None;
    }
    let right = |r: &RunRecord, id: &String| f64::from(u8::from(r.final_items[id]));
    // d[s][i]: seed s's difference on sample i (-1, 0 or 1).
    let d: Vec<Vec<f64>> = pairs
        .iter()
        .map(|(r, b)| ids.iter().map(|id| right(r, id) - right(b, id)).collect())
        .collect();
    let (seeds, items) = (d.len(), ids.len());
    let cells = (seeds * items) as f64;
    let mean = d.iter().flatten().sum::<f64>() / cells;
    let mut stream = 0u64;
    let mut draw = |n: usize| {
        stream += 1;
        ((u128::from(crate::seed::mix(&[0x0b00_75ed, stream])) * n as u128) >> 64) as usize
    };
    let mut means = Vec::with_capacity(RESAMPLES);
    let mut weight = vec![0.0; seeds];
    for _ in 0..RESAMPLES {
        weight.fill(0.0);
        for _ in 0..seeds {
            weight[draw(seeds)] += 1.0;
        }
        let mut total = 0.0;
        for _ in 0..items {
            let i = draw(items);
            total += d
                .iter()
                .zip(&weight)
                .map(|(row, w)| w * row[i])
                .sum::<f64>();
        }
        means.push(total / cells);
    }
    Some(Resampled {
        mean,
        low: stats::quantile(&means, 0.025),
        high: stats::quantile(&means, 0.975),
        seeds,
        items,
    })
}

/// Student's t quantile at 0.975 for `df` degrees of freedom (two-sided 95%).
fn t_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_are_strategies_or_named_overrides() {
        assert_eq!(
            Arm::parse("random").unwrap().sets,
            ["curriculum.strategy=\"random\""]
        );
        let a =
            Arm::parse("edco-drop:curriculum.drop_top_fraction=0.1,curriculum.rounds=2").unwrap();
        assert_eq!(a.name, "edco-drop");
        assert_eq!(a.sets.len(), 2);
        assert!(Arm::parse("../x").is_err());
        assert!(Arm::parse("a:b").is_err());
        for bad in ["..", ".", ".hidden", "-x"] {
            assert!(Arm::parse(bad).is_err(), "{bad}");
        }
        for shared in [
            "data.train=\"x\"",
            "eval.max_samples=3",
            "model.dtype=\"f32\"",
            " run.seed=2",
        ] {
            let e = Arm::parse(&format!("a:{shared}")).unwrap_err();
            assert!(
                format!("{e}").contains("an arm may change only what is selected"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_resampled_interval_counts_the_held_out_sample() {
        // One seed, 400 items: the arm gets 240 right, random 200 (the same 200 and 40 more),
        // so 40 items differ by one: a difference of 0.1 with a binomial standard error of
        // sqrt(0.1 * 0.9 / 400) = 0.015, an interval of about 0.1 +- 0.029.
        let run = |right: usize, seed: u64| RunRecord {
            seed,
            final_items: (0..400).map(|i| (format!("q{i}"), i < right)).collect(),
            ..Default::default()
        };
        let r = resampled_final(&[run(240, 1)], &[run(200, 1)]).unwrap();
        assert_eq!((r.seeds, r.items), (1, 400));
        assert!((r.mean - 0.1).abs() < 1e-12);
        assert!((r.low - (0.1 - 1.96 * 0.015)).abs() < 0.006, "{r:?}");
        assert!((r.high - (0.1 + 1.96 * 0.015)).abs() < 0.006, "{r:?}");
        // Seeds that disagree widen it: one seed +0.1, another -0.1, the mean 0.
        let two =
            resampled_final(&[run(240, 1), run(160, 2)], &[run(200, 1), run(200, 2)]).unwrap();
        assert_eq!(two.seeds, 2);
        assert!(
            two.mean.abs() < 1e-12 && two.low < -0.05 && two.high > 0.05,
            "{two:?}"
        );
        // Only the samples every pair evaluated count; runs without per-sample results, none.
        let mut short = run(240, 1);
        short.final_items.retain(|id, _| id != "q0" && id != "q1");
        assert_eq!(
            resampled_final(&[short], &[run(200, 1)]).unwrap().items,
            398
        );
        assert!(resampled_final(&[RunRecord::default()], &[run(200, 0)]).is_none());
    }

    #[test]
    fn the_paired_interval_is_students() {
        let run = |seed, last| RunRecord {
            seed,
            accuracy: vec![Some(0.1), Some(last)],
            option_accuracy: vec![None, None],
            score_seconds: vec![1.0],
            train_seconds: vec![2.0],
            steps: 4,
            tokens: 100,
            reward: None,
            zero_std_fraction: None,
            new: vec![Some(4.0)],
            picked_score: vec![None],
            picked_base_accuracy: vec![None],
            pool_score: vec![None],
            final_items: BTreeMap::new(),
            machines: Vec::new(),
        };
        let arm = [run(1, 0.5), run(2, 0.6), run(3, 0.4)];
        let base = [run(1, 0.4), run(2, 0.4), run(3, 0.4)];
        let p = paired_final(&arm, &base, |r| &r.accuracy).unwrap();
        // Differences 0.1, 0.2, 0.0: mean 0.1, sd 0.1, half-width 4.303 * 0.1 / sqrt(3).
        let half = 4.303 * 0.1 / 3f64.sqrt();
        assert!((p.mean - 0.1).abs() < 1e-12 && (p.high - p.mean - half).abs() < 1e-9);
        assert_eq!(p.n, 3);
        assert!(paired_final(&arm, &base, |r| &r.option_accuracy).is_none());
    }
}
