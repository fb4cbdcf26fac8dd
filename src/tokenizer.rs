//! Tokenizers and chat templates. A model's `tokenizer.json` (or a byte-level BPE rebuilt from
//! GGUF metadata) and its own Jinja chat template, rendered with minijinja set up the way
//! transformers' `apply_chat_template` sets up jinja2 (trim/lstrip blocks, Python string methods,
//! `raise_exception`, `strftime_now`, Python's `tojson`), so prompts come out byte-identical.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::AddedToken;

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What `tokenizer_config.json` (or GGUF metadata) says besides the vocabulary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerMeta {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub add_bos_token: bool,
}

/// Llama 3's pre-tokenizer pattern (digits in groups of up to three).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub meta: TokenizerMeta,
    /// Where it came from, for errors: a `tokenizer.json`, or a GGUF file's metadata.
    origin: String,
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Text of several scripts, digits, spaces and controls that a tokenizer must get through.
const PROBE: &str = "Hello, world! 123 4,567.89 h\u{e9}llo \u{65e5}\u{672c}\u{8a9e} \
    \u{41f}\u{440}\u{438}\u{432}\u{435}\u{442} \u{1f600}\n\t  end";

/// Encodes and decodes a probe text once, so that a tokenizer whose parts panic on ordinary
/// input (a crafted normalizer's tables, say) fails here, as an error, not in the middle of a
/// run. Only a panic fails: a tokenizer may well refuse characters it has no token for.
fn probe(inner: &tokenizers::Tokenizer) -> Result<()> {
    crate::contain::contained("its normalizer, pre-tokenizer or model", || {
        if let Ok(enc) = inner.encode(PROBE, true) {
            let _ = inner.decode(enc.get_ids(), false);
        }
    })
}

impl Tokenizer {
    /// `tokenizer.json`, plus `tokenizer_config.json` and `chat_template.jinja` when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        use crate::model::io::folder;
        let path = folder::file(dir, "tokenizer.json")?;
        let inner =
            crate::contain::contained(path.display(), || tokenizers::Tokenizer::from_file(&path))?
                .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        probe(&inner).with_context(|| format!("{}: cannot load tokenizer", path.display()))?;
        let mut meta = TokenizerMeta::default();
        let cfg_path = folder::file(dir, "tokenizer_config.json")?;
        if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?;
            let cfg: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: malformed JSON", cfg_path.display()))?;
            meta.bos_token = token_string(cfg.get("bos_token"));
            meta.eos_token = token_string(cfg.get("eos_token"));
            meta.pad_token = token_string(cfg.get("pad_token"));
            meta.add_bos_token = cfg
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            meta.chat_template = match cfg.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
                Some(other) => bail!(
                    "{}: field `chat_template`: unexpected {other}",
                    cfg_path.display()
                ),
            };
        }
        let jinja = folder::file(dir, "chat_template.jinja")?;
        if jinja.is_file() {
            meta.chat_template = Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("reading {}", jinja.display()))?,
            );
        }
        let origin = format!("the model's {}", path.display());
        Ok(Self {
            inner,
            meta,
            origin,
        })
    }

    /// A byte-level BPE (GPT-2 style) from a vocabulary and merges, as GGUF stores them.
    /// `pre` is llama.cpp's pre-tokenizer name: `smollm` (and similar) split digits one by one.
    /// `origin` says where it came from, for errors.
    pub fn byte_level_bpe(
        tokens: Vec<String>,
        merges: Vec<String>,
        special: &[(u32, String)],
        pre: Option<&str>,
        meta: TokenizerMeta,
        origin: String,
    ) -> Result<Self> {
        use tokenizers::SplitDelimiterBehavior;
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::{
            PreTokenizerWrapper,
            byte_level::ByteLevel,
            digits::Digits,
            sequence::Sequence,
            split::{Split, SplitPattern},
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("malformed merge `{m}`"))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("building BPE: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        // llama.cpp's pre-tokenizer names, as Hugging Face pre-tokenizers.
        let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
            let split = Split::new(
                SplitPattern::Regex(pattern.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("pre-tokenizer regex: {e}"))?;
            Ok(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into())
        };
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            Some("smollm") | Some("starcoder") | Some("refact") => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            Some("llama-bpe") | Some("llama3") => split(LLAMA3_SPLIT)?,
            Some("qwen2") => split(&LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"))?,
            Some("gpt2") | Some("default") | None => ByteLevel::new(false, true, true).into(),
            Some(other) => {
                tracing::warn!(
                    "unknown GGUF pre-tokenizer `{other}`; using GPT-2's byte-level split"
                );
                ByteLevel::new(false, true, true).into()
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.with_post_processor(Some(ByteLevel::new(true, false, true)));
        let added: Vec<AddedToken> = special
            .iter()
            .map(|(_, t)| AddedToken::from(t.clone(), true))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| anyhow!("adding special tokens: {e}"))?;
        for (id, t) in special {
            if inner.token_to_id(t) != Some(*id) {
                bail!("special token `{t}` does not map back to id {id}");
            }
        }
        Ok(Self {
            inner,
            meta,
            origin,
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| anyhow!("serialising tokenizer: {e}"))?;
        crate::atomic_file::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.meta.bos_token,
            "eos_token": self.meta.eos_token,
            "pad_token": self.meta.pad_token,
            "add_bos_token": self.meta.add_bos_token,
            "chat_template": self.meta.chat_template,
            "clean_up_tokenization_spaces": false,
        });
        crate::atomic_file::write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg)?.as_bytes(),
        )
    }

    /// Token ids of `text`. The library's panics (a stranger's pre-tokenizer pattern that
    /// backtracks past the regex engine's limit, on some text only) are errors.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let what = format!("tokenizing: {}", self.origin);
        let enc = crate::contain::contained(what, || self.inner.encode(text, add_special_tokens))?
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let what = format!("decoding: {}", self.origin);
        crate::contain::contained(what, || self.inner.decode(ids, skip_special_tokens))?
            .map_err(|e| anyhow!("decoding: {e}"))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id used to pad batches: the pad token, else the EOS token, else 0.
    pub fn pad_id(&self) -> u32 {
        [&self.meta.pad_token, &self.meta.eos_token]
            .into_iter()
            .flatten()
            .find_map(|t| self.token_id(t))
            .unwrap_or(0)
    }

    /// Renders `messages` with the model's chat template. `extra` holds template variables such as
    /// `enable_thinking` (Qwen3) or `date_string` (Llama 3).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let template = self.meta.chat_template.as_deref().context(
            "this model has no chat template (tokenizer_config.json `chat_template`); configure one or use raw prompts",
        )?;
        render_chat_template(template, messages, add_generation_prompt, &self.meta, extra)
    }

    /// Chat-formatted token ids for a prompt, ready for generation.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<u32>> {
        // The template already writes BOS where the model wants it, as transformers assumes.
        self.encode(&self.apply_chat_template(messages, true, extra)?, false)
    }
}

/// Renders a Hugging Face chat template the way transformers does.
pub fn render_chat_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    meta: &TokenizerMeta,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<String> {
    use minijinja::{Environment, Error, ErrorKind, Value};
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .context("configuring the template syntax")?,
    );
    minijinja_contrib::add_to_environment(&mut env);
    crate::jinja::bound(&mut env);
    env.set_unknown_method_callback(crate::jinja::python_methods);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env.add_filter("tojson", python_tojson);
    env.add_template("chat_template", template)
        .context("parsing the chat template")?;
    let mut ctx = serde_json::Map::new();
    ctx.insert("messages".into(), serde_json::to_value(messages)?);
    ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
    for (k, v) in [
        ("bos_token", &meta.bos_token),
        ("eos_token", &meta.eos_token),
        ("pad_token", &meta.pad_token),
    ] {
        if let Some(v) = v {
            ctx.insert(k.into(), v.clone().into());
        }
    }
    for (k, v) in extra {
        ctx.insert(k.clone(), v.clone());
    }
    let ctx = Value::from(minijinja::value::Serde(&ctx));
    crate::jinja::render(&env, "chat_template", ctx)
        .map_err(|e| anyhow!("rendering the chat template: {e:#}"))
}

/// transformers' `tojson` filter: Python's `json.dumps(x, ensure_ascii=False, indent=indent)`
/// (separators `", "` and `": "`, or `","` and `": "` with newlines when indented; `indent` as
/// a count of spaces), also by position as Jinja's own `tojson(indent)`; `ensure_ascii=True`
/// escapes the characters beyond ASCII as Python does.
fn python_tojson(
    value: minijinja::Value,
    indent: Option<minijinja::Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    use minijinja::{Error, ErrorKind};
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<minijinja::Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be a count of spaces",
            )
        })?),
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let style = crate::jinja::JsonStyle {
        indent,
        ensure_ascii,
        html_safe: false,
        python_floats: true,
    };
    Ok(minijinja::Value::from_safe_string(crate::jinja::to_json(
        &value, style,
    )?))
}

/// `strftime_now(fmt)` as transformers provides it, for today's UTC date (`%d %b %Y` and the
/// other date fields Llama templates use).
fn strftime_now(fmt: &str) -> Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(format_date(secs / 86_400, fmt))
}

fn format_date(days_since_epoch: u64, fmt: &str) -> String {
    // Howard Hinnant's civil-from-days.
    let z = days_since_epoch as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_python_strftime() {
        // 2024-07-26 is day 19930 since 1970-01-01.
        assert_eq!(format_date(19_930, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(format_date(0, "%Y-%m-%d %B"), "1970-01-01 January");
        assert_eq!(format_date(11_016, "%d %b %Y"), "29 Feb 2000");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        // Python: json.dumps(x, ensure_ascii=False), the same with indent=2 (also given by
        // position, as Jinja's tojson takes it), and json.dumps(x).
        let mut extra = serde_json::Map::new();
        extra.insert(
            "x".into(),
            serde_json::json!({"a": [1, "é"], "b": {"c": null}}),
        );
        let out = render_chat_template(
            "{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(ensure_ascii=True) }}|{{ x|tojson(2) }}",
            &[],
            false,
            &TokenizerMeta::default(),
            &extra,
        )
        .unwrap();
        let indented =
            "{\n  \"a\": [\n    1,\n    \"é\"\n  ],\n  \"b\": {\n    \"c\": null\n  }\n}";
        assert_eq!(
            out,
            format!(
                r#"{{"a": [1, "é"], "b": {{"c": null}}}}|{indented}|{{"a": [1, "\u00e9"], "b": {{"c": null}}}}|{indented}"#
            )
        );
    }

    #[test]
    fn tojson_lays_out_empty_containers_indents_and_surrogates_as_python() {
        // Python 3: json.dumps(x, indent=0, ensure_ascii=True) and json.dumps(x, indent=3,
        // ensure_ascii=False), x = {"a": [], "b": {}, "c": "\U0001F600<&", "d": [[1], []]}.
        let mut extra = serde_json::Map::new();
        extra.insert(
            "x".into(),
            serde_json::json!({"a": [], "b": {}, "c": "\u{1F600}<&", "d": [[1], []]}),
        );
        let out = render_chat_template(
            "{{ x|tojson(indent=0, ensure_ascii=True) }}|{{ x|tojson(indent=3) }}",
            &[],
            false,
            &TokenizerMeta::default(),
            &extra,
        )
        .unwrap();
        let zero: String = serde_json::from_str(
            r#""{\n\"a\": [],\n\"b\": {},\n\"c\": \"\\ud83d\\ude00<&\",\n\"d\": [\n[\n1\n],\n[]\n]\n}""#,
        )
        .unwrap();
        let three: String = serde_json::from_str(
            r#""{\n   \"a\": [],\n   \"b\": {},\n   \"c\": \"\ud83d\ude00<&\",\n   \"d\": [\n      [\n         1\n      ],\n      []\n   ]\n}""#,
        )
        .unwrap();
        assert_eq!(out, format!("{zero}|{three}"));

        // Python 3: json.dumps([1e-05, 1e16, 2.0, 0.0001, 1.5e-07, -0.0, 123456789.125, 1e300,
        // "\x7f"], ensure_ascii=True).
        extra.insert(
            "x".into(),
            serde_json::json!([
                1e-05,
                1e16,
                2.0,
                0.0001,
                1.5e-07,
                -0.0,
                123456789.125,
                1e300,
                "\u{7f}"
            ]),
        );
        let out = render_chat_template(
            "{{ x|tojson(ensure_ascii=True) }}",
            &[],
            false,
            &TokenizerMeta::default(),
            &extra,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"[1e-05, 1e+16, 2.0, 0.0001, 1.5e-07, -0.0, 123456789.125, 1e+300, "\u007f"]"#
        );
    }

    #[test]
    fn templates_get_transformers_jinja_settings() {
        let template = "{% for m in messages %}\n  {{ m.role | upper }}: {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
        let meta = TokenizerMeta::default();
        let out = render_chat_template(
            template,
            &[Message::new("user", " hi ")],
            true,
            &meta,
            &Default::default(),
        )
        .unwrap();
        // As jinja2 renders it with trim_blocks and lstrip_blocks (checked with jinja2 3.1.6).
        assert_eq!(out, "  USER: hi\nA:");
        let e = render_chat_template(
            "{{ raise_exception('no system role') }}",
            &[],
            false,
            &meta,
            &Default::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("no system role"));
    }

    #[test]
    fn missing_template_is_a_clear_error() {
        let inner = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
        let tok = Tokenizer {
            inner,
            meta: TokenizerMeta::default(),
            origin: "a test's tokenizer".into(),
        };
        let e = tok
            .apply_chat_template(&[Message::new("user", "x")], true, &Default::default())
            .unwrap_err();
        assert!(format!("{e:#}").contains("no chat template"));
    }
}
