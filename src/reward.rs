//! Rule-based answer checking for verifiable items, shared by evaluation and GRPO rewards.
//! [`Rule::Auto`] picks the rule from the sample, in this order (a named rule applies its
//! check to every sample, and a sample it cannot check has no verifiable answer):
//! - multiple choice (the sample has options): an explicit "answer is X" / "answer: X"; else a
//!   letter that opens the reply (`B`, `B.`, `(B)`, `B)`); else the first standalone option
//!   letter anywhere; letters are matched case-sensitively against the option keys;
//! - yes/no (the reference is yes, no or maybe): the first of those words;
//! - numeric (the reference parses as a number): the last number in the reply (thousands
//!   separators removed), compared with a relative tolerance of 1e-6;
//! - otherwise: exact match after trimming, case-insensitive.

use crate::data::Sample;
use serde::{Deserialize, Serialize};

/// How a reply is checked against a sample's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Chosen per sample: choice with options, yes/no for yes/no/maybe answers, numeric for
    /// numbers, exact otherwise.
    #[default]
    Auto,
    /// The option letter (samples with options only).
    Choice,
    /// The first yes, no or maybe.
    YesNo,
    /// The last number, within a relative 1e-6.
    Numeric,
    /// The whole reply, trimmed, case-insensitive.
    Exact,
}

fn is_letter_at(chars: &[char], i: usize, letters: &[String]) -> Option<String> {
    let c = *chars.get(i)?;
    let before_ok = i == 0 || !chars[i - 1].is_alphanumeric();
    let after_ok = chars.get(i + 1).is_none_or(|n| !n.is_alphanumeric());
    let s = c.to_string();
    (before_ok && after_ok && letters.contains(&s)).then_some(s)
}

/// The option letter a reply commits to, if any.
pub fn extract_choice(reply: &str, letters: &[String]) -> Option<String> {
    // ASCII lowercasing keeps byte offsets, so `pos` indexes `reply` too.
    let lower = reply.to_ascii_lowercase();
    for cue in ["answer is", "answer:"] {
        if let Some(pos) = lower.find(cue) {
            let rest: Vec<char> = reply[pos + cue.len()..].chars().collect();
            for i in 0..rest.len().min(12) {
                if let Some(l) = is_letter_at(&rest, i, letters) {
                    return Some(l);
                }
            }
        }
    }
    let chars: Vec<char> = reply
        .trim_start()
        .trim_start_matches(['(', '*', '['])
        .chars()
        .collect();
    if let Some(l) = is_letter_at(&chars, 0, letters) {
        return Some(l);
    }
    let all: Vec<char> = reply.chars().collect();
    (0..all.len()).find_map(|i| is_letter_at(&all, i, letters))
}

/// The last number in a reply (e.g. "#### 1,600" -> 1600).
pub fn extract_number(reply: &str) -> Option<f64> {
    let cleaned: String = reply.chars().filter(|c| *c != ',').collect();
    let mut last = None;
    let mut cur = String::new();
    let mut prev = ' ';
    for c in cleaned.chars().chain(std::iter::once(' ')) {
        // A minus sign only where a number can start (not the hyphen of "5-10").
        let starts_negative = c == '-' && cur.is_empty() && !prev.is_ascii_digit();
        if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) || starts_negative {
            cur.push(c);
        } else {
            if let Ok(v) = cur.trim_end_matches('.').parse::<f64>() {
                last = Some(v);
            }
            cur.clear();
        }
        prev = c;
    }
    last
}

fn first_yes_no(reply: &str) -> Option<&'static str> {
    reply
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .find_map(|w| match w {
            "yes" => Some("yes"),
            "no" => Some("no"),
            "maybe" => Some("maybe"),
            _ => None,
        })
}

/// Whether `reply` answers `sample` correctly under the automatic rule; None when the sample has
/// no verifiable answer.
pub fn is_correct(sample: &Sample, reply: &str) -> Option<bool> {
    check(Rule::Auto, sample, reply)
}

/// Whether `reply` answers `sample` correctly under `rule`; None when the sample has no answer
/// the rule can check.
pub fn check(rule: Rule, sample: &Sample, reply: &str) -> Option<bool> {
    let answer = sample.answer.as_deref()?.trim();
    let lower = answer.to_lowercase();
    let number = answer.replace(',', "").parse::<f64>().ok();
    let rule = match rule {
        Rule::Auto if sample.options.is_some() => Rule::Choice,
        Rule::Auto if matches!(lower.as_str(), "yes" | "no" | "maybe") => Rule::YesNo,
        Rule::Auto if number.is_some() => Rule::Numeric,
        Rule::Auto => Rule::Exact,
        named => named,
    };
    match rule {
        Rule::Choice => {
            let letters: Vec<String> = sample.options.as_ref()?.keys().cloned().collect();
            Some(extract_choice(reply, &letters).as_deref() == Some(answer))
        }
        Rule::YesNo => {
            if !matches!(lower.as_str(), "yes" | "no" | "maybe") {
                return None;
            }
            Some(first_yes_no(reply) == Some(lower.as_str()))
        }
        Rule::Numeric => {
            let expected = number?;
            Some(
                extract_number(reply)
                    .is_some_and(|v| (v - expected).abs() <= 1e-6 * expected.abs().max(1.0)),
            )
        }
        Rule::Exact | Rule::Auto => Some(reply.trim().eq_ignore_ascii_case(answer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters() -> Vec<String> {
        ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn choices_are_extracted_from_common_reply_shapes() {
        let l = letters();
        assert_eq!(extract_choice("B", &l).as_deref(), Some("B"));
        assert_eq!(extract_choice("(C) because", &l).as_deref(), Some("C"));
        assert_eq!(extract_choice("D. Aspirin", &l).as_deref(), Some("D"));
        assert_eq!(
            extract_choice("I think the answer is A.", &l).as_deref(),
            Some("A")
        );
        assert_eq!(extract_choice("Answer: **B**", &l).as_deref(), Some("B"));
        assert_eq!(
            extract_choice("A patient with B symptoms; answer is C", &l).as_deref(),
            Some("C")
        );
        assert_eq!(
            extract_choice("Clearly option D fits.", &l).as_deref(),
            Some("D")
        );
        assert_eq!(extract_choice("No idea", &l), None);
        // "A" inside a word does not count.
        assert_eq!(extract_choice("Aspirin", &l), None);
    }

    #[test]
    fn numbers_and_yes_no() {
        assert_eq!(extract_number("so 3 + 4 = 7\n#### 1,600"), Some(1600.0));
        assert_eq!(extract_number("It costs -2.5 dollars."), Some(-2.5));
        assert_eq!(extract_number("none"), None);
        assert_eq!(extract_number("take 5-10 mg"), Some(10.0));
        // Non-ASCII text before the cue must not shift the slice (and must not panic).
        assert_eq!(
            extract_choice("İİ the answer is B", &letters()).as_deref(),
            Some("B")
        );
        assert_eq!(first_yes_no("Yes, it is."), Some("yes"));
        assert_eq!(first_yes_no("Probably not; no."), Some("no"));
    }

    #[test]
    fn correctness_by_answer_kind() {
        let mcq = crate::data::parse_record(
            r#"{"question":"Q","options":{"A":"x","B":"y"},"answer":"B"}"#,
            1,
        )
        .unwrap();
        assert_eq!(is_correct(&mcq, "B. y"), Some(true));
        assert_eq!(is_correct(&mcq, "A"), Some(false));
        let num = crate::data::parse_record(r#"{"question":"2+2?","answer":"4"}"#, 1).unwrap();
        assert_eq!(is_correct(&num, "The total is 4."), Some(true));
        assert_eq!(is_correct(&num, "4 or 5"), Some(false));
        let yn = crate::data::parse_record(
            r#"{"prompt":"Is it?","completion":"yes","answer":"yes"}"#,
            1,
        )
        .unwrap();
        assert_eq!(is_correct(&yn, "Yes."), Some(true));
        let free = crate::data::parse_record(r#"{"prompt":"p","completion":"c"}"#, 1).unwrap();
        assert_eq!(is_correct(&free, "c"), None);
    }

    #[test]
    fn a_named_rule_checks_every_sample_its_way() {
        let num = crate::data::parse_record(r#"{"question":"q","answer":"42"}"#, 1).unwrap();
        assert_eq!(check(Rule::Numeric, &num, "so, 42."), Some(true));
        assert_eq!(check(Rule::Exact, &num, "so, 42."), Some(false));
        assert_eq!(check(Rule::Exact, &num, " 42 "), Some(true));
        assert_eq!(check(Rule::Choice, &num, "A"), None);
        assert_eq!(check(Rule::YesNo, &num, "yes"), None);
        let word = crate::data::parse_record(r#"{"question":"q","answer":"aspirin"}"#, 1).unwrap();
        assert_eq!(check(Rule::Numeric, &word, "1"), None);
        assert_eq!(check(Rule::Auto, &word, "Aspirin"), Some(true));
    }
}
