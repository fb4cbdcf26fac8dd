//! The budget every template renders within. Chat templates come with a stranger's model
//! (`tokenizer_config.json`, GGUF metadata) and data templates with a config; neither may run
//! for long or take much memory. minijinja's fuel charges instructions and the bytes values
//! take (checked before a concatenation or repetition allocates), so loops and doubling
//! strings stop with an error naming the template. The one allocation it charges only after
//! the fact, Python's `str.format` with a huge width, is refused before it runs.

use minijinja::{Environment, Error, ErrorKind, State, Value};

/// About 4 million instructions, or 256 MB of values: a chat template on a long conversation
/// uses a small fraction of it, and a loop that exhausts it stops within a second or two.
pub const FUEL: u64 = 4_000_000;

/// The widest field `str.format` may pad to, and the most padding all its fields may ask for.
const MAX_FORMAT_WIDTH: u64 = 1 << 16;
const MAX_FORMAT_PADDING: u64 = 1 << 24;

/// Gives `env` the render budget.
pub fn bound(env: &mut Environment<'_>) {
    env.set_fuel(Some(FUEL));
}

/// Python's string methods (minijinja-contrib's pycompat), with `format` refused when a field
/// asks for a width or precision beyond [`MAX_FORMAT_WIDTH`].
pub fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if method == "format"
        && let Some(s) = value.as_str()
    {
        let (widest, total) = field_widths(s);
        if widest > MAX_FORMAT_WIDTH || total > MAX_FORMAT_PADDING {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "str.format: fields of width up to {widest}, {total} in all (at most \
                     {MAX_FORMAT_WIDTH} each, {MAX_FORMAT_PADDING} in all)"
                ),
            ));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// The largest number in any `{...:spec}` of a format string (escaped `{{` and `}}` are
/// text), and their sum: the padding the fields can ask for.
fn field_widths(s: &str) -> (u64, u64) {
    let text = s.replace("{{", "").replace("}}", "");
    text.split('{')
        .skip(1)
        .filter_map(|field| {
            field
                .split('}')
                .next()?
                .split_once(':')
                .map(|(_, spec)| spec)
        })
        .flat_map(|spec| {
            spec.split(|c: char| !c.is_ascii_digit())
                .filter(|d| !d.is_empty())
                .map(|d| d.parse::<u64>().unwrap_or(u64::MAX))
                .collect::<Vec<_>>()
        })
        .fold((0, 0), |(widest, total), n| {
            (widest.max(n), total.saturating_add(n))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_widths_are_read_from_every_field() {
        assert_eq!(
            field_widths("{:>1000000000}"),
            (1_000_000_000, 1_000_000_000)
        );
        assert_eq!(field_widths("a {0:08.3f} b {name:>12}"), (12, 23));
        assert_eq!(field_widths("{} and {0}"), (0, 0));
        assert_eq!(field_widths("{{:123456}} {:2}"), (2, 2));
        assert_eq!(field_widths("{:99999999999999999999999}").0, u64::MAX);
    }

    fn render(template: &str) -> (Result<String, Error>, std::time::Duration) {
        let mut env = Environment::new();
        bound(&mut env);
        env.set_unknown_method_callback(python_methods);
        env.add_template("t", template).unwrap();
        let start = std::time::Instant::now();
        let out = env.get_template("t").unwrap().render(());
        (out, start.elapsed())
    }

    #[test]
    fn template_bombs_stop_quickly_with_an_error() {
        for bomb in [
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "{% set s = namespace(v='x') %}{% for i in range(64) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v }}",
            "{{ 'x' * 10000000000 }}",
            "{{ '{:>1000000000}'.format('x') }}",
            "{{ ('{0:>65536}' * 1000000).format('x') }}",
        ] {
            let (out, took) = render(bomb);
            assert!(out.is_err(), "{bomb} rendered");
            assert!(took.as_secs_f64() < 3.0, "{bomb} took {took:?}");
        }
        // An ordinary template is well within the budget.
        let (out, _) = render("{% for i in range(1000) %}{{ '{:>4}'.format(i) }}{% endfor %}");
        assert_eq!(out.unwrap().len(), 4000);
    }
}
