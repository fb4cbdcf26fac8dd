//! Datasets: JSON Lines in three shapes, each turned into chat messages plus a reference answer.
//! - chat: `{"messages": [{"role", "content"}, ...]}`; the last assistant turn is the response.
//! - prompt/completion: `{"prompt": "...", "completion": "..."}` (`response` is accepted too).
//! - question: `{"question", "options": {"A": ...}, "answer": "B"}` (multiple choice, with an
//!   optional `context`), or `{"question", "answer"}` (short answer; `solution` is the response
//!   when present). The user turn is rendered by a [`PromptTemplates`] template.
//!
//! [`Format::Auto`] detects the shape per line; a named format requires it of every line. Every
//! record gets an `id` (its own, or `line-N`). Bad lines name the file, line and field.
//! `tokenize` turns samples into token ids.

pub mod tokenize;

use crate::tokenizer::Message;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: String,
    /// The prompt side of the conversation (system and user turns).
    pub messages: Vec<Message>,
    /// The reference response, for SFT and perplexity.
    pub response: Option<String>,
    /// The verifiable answer (an option letter, or a short answer), for rewards and accuracy.
    pub answer: Option<String>,
    /// Multiple-choice options by letter.
    pub options: Option<BTreeMap<String, String>>,
}

/// The record shape a file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Format {
    /// Detected per line from its fields.
    #[default]
    Auto,
    Chat,
    PromptCompletion,
    Question,
}

impl Format {
    /// The field that marks a record of this shape.
    fn key_field(self) -> &'static str {
        match self {
            Format::Auto => "messages`, `prompt` or `question",
            Format::Chat => "messages",
            Format::PromptCompletion => "prompt",
            Format::Question => "question",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Chat => "chat",
            Format::PromptCompletion => "prompt_completion",
            Format::Question => "question",
        }
    }
}

/// The default template of a multiple-choice user turn: optional context, the question, one
/// `L. text` line per option, then the instruction.
pub const MCQ_TEMPLATE: &str = "{% if context %}{{ context }}\n\n{% endif %}{{ question }}\n\n\
{% for o in options %}{{ o.letter }}. {{ o.text }}\n{% endfor %}\n\
Answer with the letter of the correct option.";

/// The default template of a short-answer user turn: optional context, then the question.
pub const QA_TEMPLATE: &str = "{% if context %}{{ context }}\n\n{% endif %}{{ question }}";

/// The Jinja templates that render `question` records into a user turn. Both see `context` (empty
/// when absent) and `question`, trimmed; the multiple-choice one also sees `options`, a list of
/// `{letter, text}` in letter order.
#[derive(Debug)]
pub struct PromptTemplates {
    env: minijinja::Environment<'static>,
}

impl PromptTemplates {
    /// Compiles both templates; a syntax error names the template (`mcq` or `qa`).
    pub fn new(mcq: &str, qa: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        crate::jinja::bound(&mut env);
        for (name, text) in [("mcq", mcq), ("qa", qa)] {
            env.add_template_owned(name, text.to_string())
                .with_context(|| format!("the {name} template"))?;
        }
        let me = Self { env };
        // Render a probe so that a template naming an unknown variable fails here, not per line.
        let mut options = BTreeMap::new();
        options.insert("A".to_string(), "x".to_string());
        me.mcq(Some("c"), "q", &options)?;
        me.qa(Some("c"), "q")?;
        Ok(me)
    }

    fn render(&self, name: &str, ctx: serde_json::Value) -> Result<String> {
        let ctx = minijinja::value::Value::from(minijinja::value::Serde(&ctx));
        crate::jinja::render(&self.env, name, ctx)
            .with_context(|| format!("rendering the {name} template"))
    }

    /// A multiple-choice user turn.
    pub fn mcq(
        &self,
        context: Option<&str>,
        question: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<String> {
        let options: Vec<Value> = options
            .iter()
            .map(|(l, t)| serde_json::json!({"letter": l, "text": t.trim()}))
            .collect();
        self.render(
            "mcq",
            serde_json::json!({
                "context": context.unwrap_or("").trim(),
                "question": question.trim(),
                "options": options,
            }),
        )
    }

    /// A short-answer user turn.
    pub fn qa(&self, context: Option<&str>, question: &str) -> Result<String> {
        self.render(
            "qa",
            serde_json::json!({
                "context": context.unwrap_or("").trim(),
                "question": question.trim(),
            }),
        )
    }
}

impl Default for PromptTemplates {
    fn default() -> Self {
        Self::new(MCQ_TEMPLATE, QA_TEMPLATE).expect("the default templates compile")
    }
}

/// How a file is read.
#[derive(Debug, Default)]
pub struct ReadOptions {
    pub format: Format,
    pub templates: PromptTemplates,
    /// Skip (and count) malformed lines instead of failing.
    pub skip_invalid: bool,
}

fn str_field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!("field `{key}`: expected a string, got {}", kind(other)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The roles of chat turns that the templates and trainers know.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Parses one JSON line with the default options; `line_no` is 1-based and names the default id.
pub fn parse_record(text: &str, line_no: usize) -> Result<Sample> {
    parse_record_with(text, line_no, &ReadOptions::default())
}

/// Parses one JSON line as `opts` say.
pub fn parse_record_with(text: &str, line_no: usize, opts: &ReadOptions) -> Result<Sample> {
    let value: Value = serde_json::from_str(text).context("not valid JSON")?;
    let Value::Object(obj) = value else {
        bail!("expected a JSON object, got {}", kind(&value));
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => format!("line-{line_no}"),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => bail!(
            "field `id`: expected a string or number, got {}",
            kind(other)
        ),
    };
    let shape = if obj.contains_key("messages") {
        Some(Format::Chat)
    } else if obj.contains_key("prompt") {
        Some(Format::PromptCompletion)
    } else if obj.contains_key("question") {
        Some(Format::Question)
    } else {
        None
    };
    if opts.format != Format::Auto && shape != Some(opts.format) {
        bail!(
            "field `{}` is missing (data.format = {}{})",
            opts.format.key_field(),
            opts.format.name(),
            shape.map_or(String::new(), |s| format!(
                "; the line is a {} record",
                s.name()
            ))
        );
    }
    if let Some(messages) = obj.get("messages") {
        let Value::Array(items) = messages else {
            bail!("field `messages`: expected a list, got {}", kind(messages));
        };
        let mut msgs = Vec::with_capacity(items.len());
        for (i, m) in items.iter().enumerate() {
            let m = m
                .as_object()
                .with_context(|| format!("field `messages[{i}]`: expected an object"))?;
            let role = str_field(m, "role")?
                .with_context(|| format!("field `messages[{i}].role` is missing"))?;
            if !ROLES.contains(&role) {
                bail!(
                    "field `messages[{i}].role`: `{role}` is not a chat role; expected one of \
                     {ROLES:?}{}",
                    match role {
                        "human" | "gpt" => " (ShareGPT's `human`/`gpt` are `user`/`assistant`)",
                        _ => "",
                    }
                );
            }
            let content = str_field(m, "content")?
                .with_context(|| format!("field `messages[{i}].content` is missing"))?;
            msgs.push(Message::new(role, content));
        }
        let response = match msgs.last() {
            Some(m) if m.role == "assistant" => msgs.pop().map(|m| m.content),
            _ => None,
        };
        if msgs.is_empty() {
            bail!("field `messages`: no prompt turns");
        }
        return Ok(Sample {
            id,
            messages: msgs,
            response,
            answer: str_field(&obj, "answer")?.map(str::to_string),
            options: None,
        });
    }
    if let Some(prompt) = str_field(&obj, "prompt")? {
        let response = str_field(&obj, "completion")?.or(str_field(&obj, "response")?);
        return Ok(Sample {
            id,
            messages: vec![Message::new("user", prompt)],
            response: response.map(str::to_string),
            answer: str_field(&obj, "answer")?.map(str::to_string),
            options: None,
        });
    }
    if let Some(question) = str_field(&obj, "question")? {
        let answer = match obj.get("answer") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            None | Some(Value::Null) => bail!("field `answer` is missing"),
            Some(other) => bail!("field `answer`: expected a string, got {}", kind(other)),
        };
        let context = str_field(&obj, "context")?;
        return match obj.get("options") {
            None | Some(Value::Null) => Ok(Sample {
                id,
                messages: vec![Message::new("user", &opts.templates.qa(context, question)?)],
                response: Some(str_field(&obj, "solution")?.map_or(answer.clone(), str::to_string)),
                answer: Some(answer),
                options: None,
            }),
            Some(Value::Object(given)) => {
                let mut options = BTreeMap::new();
                for (k, v) in given {
                    let text = v
                        .as_str()
                        .with_context(|| format!("field `options.{k}`: expected a string"))?;
                    options.insert(k.clone(), text.to_string());
                }
                let Some(correct) = options.get(&answer) else {
                    bail!(
                        "field `answer`: `{answer}` is not one of the options {:?}",
                        options.keys().collect::<Vec<_>>()
                    );
                };
                let response = format!("{answer}. {}", correct.trim());
                Ok(Sample {
                    id,
                    messages: vec![Message::new(
                        "user",
                        &opts.templates.mcq(context, question, &options)?,
                    )],
                    response: Some(response),
                    answer: Some(answer),
                    options: Some(options),
                })
            }
            Some(other) => bail!(
                "field `options`: expected an object of letter -> text, got {}",
                kind(other)
            ),
        };
    }
    bail!("unrecognised record: expected `messages`, `prompt` or `question`")
}

/// What loading a file produced.
pub struct Dataset {
    pub samples: Vec<Sample>,
    /// Lines skipped as invalid (only with `skip_invalid`).
    pub skipped: usize,
}

/// The lines of a JSON Lines file, without a leading UTF-8 byte-order mark (spreadsheets and
/// Windows tools write one) and without line ends (`\n` or `\r\n`).
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(move |_| !bytes.is_empty())
}

/// One line of a JSON Lines file: `None` when blank.
fn parse_line(raw: &[u8], line_no: usize, opts: &ReadOptions) -> Result<Option<Sample>> {
    let line = std::str::from_utf8(raw).map_err(|e| {
        anyhow::anyhow!(
            "not valid UTF-8 (at byte {} of the line); save the file as UTF-8",
            e.valid_up_to() + 1
        )
    })?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    parse_record_with(line, line_no, opts).map(Some)
}

/// Reads a JSON Lines file. Blank lines are ignored; a bad line fails the load with its file and
/// line number, or is counted and skipped when `skip_invalid` is set. Ids must be unique.
pub fn load_jsonl(path: &Path, opts: &ReadOptions) -> Result<Dataset> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut samples = Vec::new();
    let mut skipped = 0;
    let mut seen = std::collections::HashMap::new();
    for (i, raw) in lines(&bytes).enumerate() {
        let line_no = i + 1;
        let parsed = parse_line(raw, line_no, opts);
        match parsed.transpose() {
            None => continue,
            Some(Ok(s)) => {
                if let Some(first) = seen.insert(s.id.clone(), line_no) {
                    bail!(
                        "{}:{line_no}: field `id`: `{}` repeats the id of line {first}",
                        path.display(),
                        s.id
                    );
                }
                samples.push(s);
            }
            Some(Err(e)) if opts.skip_invalid => {
                tracing::warn!("{}:{line_no}: skipped: {e:#}", path.display());
                skipped += 1;
            }
            Some(Err(e)) => return Err(e.context(format!("{}:{line_no}", path.display()))),
        }
    }
    Ok(Dataset { samples, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_shapes_parse() {
        let chat = parse_record(
            r#"{"id":"a","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},{"role":"assistant","content":"r"}]}"#,
            1,
        )
        .unwrap();
        assert_eq!(chat.messages.len(), 2);
        assert_eq!(chat.response.as_deref(), Some("r"));
        let pc = parse_record(r#"{"prompt":"p","completion":"c"}"#, 7).unwrap();
        assert_eq!(pc.id, "line-7");
        assert_eq!(pc.response.as_deref(), Some("c"));
        let mcq = parse_record(
            r#"{"id":"m","question":"Q?","options":{"A":"x","B":"y"},"answer":"B"}"#,
            1,
        )
        .unwrap();
        assert_eq!(
            mcq.messages[0].content,
            "Q?\n\nA. x\nB. y\n\nAnswer with the letter of the correct option."
        );
        assert_eq!(mcq.response.as_deref(), Some("B. y"));
        assert_eq!(mcq.answer.as_deref(), Some("B"));
        let short = parse_record(
            r#"{"question":"2+2?","answer":"4","solution":"2+2=4\n#### 4"}"#,
            1,
        )
        .unwrap();
        assert_eq!(short.response.as_deref(), Some("2+2=4\n#### 4"));
    }

    #[test]
    fn bad_lines_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"prompt\":\"a\"}\n\n{\"question\":\"q\",\"options\":{\"A\":\"x\"},\"answer\":\"C\"}\n").unwrap();
        let strict = ReadOptions::default();
        let e = load_jsonl(&p, &strict).err().unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("d.jsonl:3") && msg.contains("field `answer`"),
            "{msg}"
        );
        let lenient = ReadOptions {
            skip_invalid: true,
            ..Default::default()
        };
        let ok = load_jsonl(&p, &lenient).unwrap();
        assert_eq!((ok.samples.len(), ok.skipped), (1, 1));
        std::fs::write(&p, "{\"prompt\":1}\n").unwrap();
        let msg = format!("{:#}", load_jsonl(&p, &strict).err().unwrap());
        assert!(
            msg.contains("d.jsonl:1") && msg.contains("field `prompt`: expected a string"),
            "{msg}"
        );
        std::fs::write(
            &p,
            "{\"id\":\"x\",\"prompt\":\"a\"}\n{\"id\":\"x\",\"prompt\":\"b\"}\n",
        )
        .unwrap();
        let msg = format!("{:#}", load_jsonl(&p, &strict).err().unwrap());
        assert!(
            msg.contains("d.jsonl:2") && msg.contains("repeats the id of line 1"),
            "{msg}"
        );
    }

    #[test]
    fn a_named_format_refuses_other_shapes() {
        let opts = |format| ReadOptions {
            format,
            ..Default::default()
        };
        let line = r#"{"prompt":"p","completion":"c"}"#;
        assert!(parse_record_with(line, 1, &opts(Format::PromptCompletion)).is_ok());
        let msg = format!(
            "{:#}",
            parse_record_with(line, 1, &opts(Format::Question)).unwrap_err()
        );
        assert!(
            msg.contains("field `question` is missing (data.format = question; the line is a prompt_completion record)"),
            "{msg}"
        );
        let msg = format!(
            "{:#}",
            parse_record_with(r#"{"text":"t"}"#, 1, &opts(Format::Chat)).unwrap_err()
        );
        assert!(msg.contains("field `messages` is missing"), "{msg}");
    }

    #[test]
    fn templates_render_questions() {
        let opts = ReadOptions {
            templates: PromptTemplates::new(
                "Q: {{ question }}\n{% for o in options %}({{ o.letter }}) {{ o.text }}\n{% endfor %}Letter:",
                "{{ context }} | {{ question }}",
            )
            .unwrap(),
            ..Default::default()
        };
        let mcq = parse_record_with(
            r#"{"question":" Q? ","options":{"B":"y ","A":"x"},"answer":"A"}"#,
            1,
            &opts,
        )
        .unwrap();
        assert_eq!(mcq.messages[0].content, "Q: Q?\n(A) x\n(B) y\nLetter:");
        assert_eq!(mcq.response.as_deref(), Some("A. x"));
        let qa =
            parse_record_with(r#"{"question":"q","context":"c","answer":"4"}"#, 1, &opts).unwrap();
        assert_eq!(qa.messages[0].content, "c | q");
        // The default short-answer template: context, a blank line, the question.
        let qa = parse_record(r#"{"question":"q ","context":" c","answer":"4"}"#, 1).unwrap();
        assert_eq!(qa.messages[0].content, "c\n\nq");
        let e = PromptTemplates::new("{{ question }", QA_TEMPLATE).unwrap_err();
        assert!(format!("{e:#}").contains("the mcq template"), "{e:#}");
        let e = PromptTemplates::new(MCQ_TEMPLATE, "{{ questoin }}").unwrap_err();
        assert!(format!("{e:#}").contains("the qa template"), "{e:#}");
    }
}
