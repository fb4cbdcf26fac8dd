//! The budget every template renders within. Chat templates come with a stranger's model
//! (`tokenizer_config.json`, GGUF metadata) and data templates with a config; neither may run
//! for long or take much memory. minijinja's fuel charges instructions and the bytes values
//! take (checked before a concatenation or repetition allocates), so loops and doubling
//! strings stop with an error naming the template. What it charges only after the text is
//! built is checked before: Python's `str.format` with a huge width, and a container (a list
//! repeated lazily, say) printed, or turned into a string, whose text would exceed
//! [`MAX_VALUE_TEXT`]; JSON is written into a buffer that refuses to grow past it.

use std::io::{self, Write};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State, Value};
use serde_json::ser::Formatter;

/// About 4 million instructions, or 256 MB of values: a chat template on a long conversation
/// uses a small fraction of it, and a loop that exhausts it stops within a second or two.
pub const FUEL: u64 = 4_000_000;

/// The widest field `str.format` may pad to, and the most padding all its fields may ask for.
const MAX_FORMAT_WIDTH: u64 = 1 << 16;
const MAX_FORMAT_PADDING: u64 = 1 << 24;

/// The most text one value may become when printed, or passed through `string`, `tojson` or
/// `pprint`: 16 MiB, some four million tokens, beyond any prompt.
pub const MAX_VALUE_TEXT: u64 = 16 << 20;

/// The most text containers may render in one template render, however often their items
/// are shared: 64 MiB.
pub const MAX_CONTAINER_TEXT: u64 = 64 << 20;

/// The stack a template renders on. A loop that wraps a list in lists builds a value as deep
/// as fuel allows (about 4 million levels at one instruction each), and dropping it recurses
/// once per level, some 35-70 bytes each: on a thread's usual 2-8 MB stack it would overflow
/// and abort the process (measured: 64 levels per iteration overflowed 128 MiB, and fit in
/// 256 MiB). The stack is address space reserved, not memory, until a template goes that deep.
const RENDER_STACK: usize = 512 << 20;

/// Renders the template `name` of `env` with `ctx` within the budget. Beyond fuel, the text
/// containers render (printed, joined, concatenated with `~`, passed to a filter that takes a
/// string) is bounded by [`MAX_CONTAINER_TEXT`] as it is written, item by item: a list holding
/// one long string many times would otherwise build gigabytes before fuel saw any of it.
pub fn render(env: &Environment<'_>, name: &str, ctx: Value) -> Result<String, Error> {
    let template = env.get_template(name)?;
    let rendered = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("template".into())
            .stack_size(RENDER_STACK)
            .spawn_scoped(s, || {
                minijinja::value::with_container_text_bound(MAX_CONTAINER_TEXT, || {
                    template.render(ctx)
                })
            })
            .map(|thread| thread.join())
    });
    let (out, exceeded) = match rendered {
        Ok(Ok(done)) => done,
        Ok(Err(_)) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "the template engine failed (a panic)",
            ));
        }
        Err(e) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot start a thread to render on: {e}"),
            ));
        }
    };
    if exceeded {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the text of its lists and maps would exceed {MAX_CONTAINER_TEXT} bytes \
                 (a long value repeated many times)"
            ),
        ));
    }
    out
}

/// Gives `env` the render budget: fuel, and the size checks of printed and serialized values.
pub fn bound(env: &mut Environment<'_>) {
    env.set_fuel(Some(FUEL));
    env.set_formatter(|out: &mut Output, state: &mut State, value: &Value| {
        check_text_size(value, "printing a value")?;
        minijinja::escape_formatter(out, state, value)
    });
    env.add_filter("string", |value: &Value| -> Result<Value, Error> {
        check_text_size(value, "string")?;
        Ok(match value.as_str() {
            Some(_) => value.clone(),
            None => Value::from(value.to_string()),
        })
    });
    // minijinja's own `tojson` (indent `true` is 2; strings safe to embed in HTML), with its
    // text bounded as it is written.
    env.add_filter(
        "tojson",
        |value: &Value, indent: Option<Value>, kwargs: Kwargs| -> Result<Value, Error> {
            let indent = match indent {
                Some(indent) => Some(indent),
                None => kwargs.get("indent")?,
            };
            let indent = match indent {
                None => None,
                Some(v) => match bool::try_from(v.clone()) {
                    Ok(true) => Some(2),
                    Ok(false) => None,
                    Err(_) => Some(usize::try_from(v)?),
                },
            };
            kwargs.assert_all_used()?;
            let style = JsonStyle {
                indent,
                ensure_ascii: false,
                html_safe: true,
                python_floats: false,
            };
            Ok(Value::from_safe_string(to_json(value, style)?))
        },
    );
    // minijinja's `pprint` (Rust's pretty `Debug`), written into a bounded buffer: its
    // indentation is text the estimate does not see.
    env.add_filter("pprint", |value: &Value| -> Result<String, Error> {
        check_text_size(value, "pprint")?;
        let mut out = Bounded(Vec::new());
        write!(out, "{value:#?}").map_err(|_| too_long("pprint"))?;
        String::from_utf8(out.0)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("pprint: {e}")))
    });
}

/// Refuses a value whose text (printed, as a string or as JSON) would exceed
/// [`MAX_VALUE_TEXT`], before any of it is built; strings and numbers pass at once.
pub fn check_text_size(value: &Value, what: &str) -> Result<(), Error> {
    if matches!(
        value.kind(),
        ValueKind::String | ValueKind::Number | ValueKind::Bool | ValueKind::None
    ) {
        return Ok(());
    }
    let mut left = MAX_VALUE_TEXT;
    if !fits(value, &mut left, 0) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{what}: the value's text would exceed {MAX_VALUE_TEXT} bytes"),
        ));
    }
    Ok(())
}

/// Takes from `left` what `value`'s text costs (quotes, separators and brackets counted, so
/// an empty item still costs), item by item, and stops as soon as it runs out: the walk is as
/// long as the allowed text at most, whatever the container's length.
fn fits(value: &Value, left: &mut u64, depth: usize) -> bool {
    fn take(left: &mut u64, n: u64) -> bool {
        match left.checked_sub(n) {
            Some(l) => {
                *left = l;
                true
            }
            None => false,
        }
    }
    if depth > 64 {
        return false;
    }
    match value.kind() {
        ValueKind::String => take(left, value.as_str().map_or(0, str::len) as u64 + 2),
        ValueKind::Bytes => take(left, value.as_bytes().map_or(0, <[u8]>::len) as u64 * 4 + 3),
        ValueKind::Seq | ValueKind::Iterable => {
            let Ok(items) = value.try_iter() else {
                return take(left, 64);
            };
            take(left, 2)
                && items
                    .into_iter()
                    .all(|item| take(left, 2) && fits(&item, left, depth + 1))
        }
        ValueKind::Map => {
            let Ok(keys) = value.try_iter() else {
                return take(left, 64);
            };
            take(left, 2)
                && keys.into_iter().all(|key| {
                    let item = value.get_item(&key).unwrap_or_default();
                    take(left, 4) && fits(&key, left, depth + 1) && fits(&item, left, depth + 1)
                })
        }
        // The longest text of a number (an i128's) is 40 bytes.
        ValueKind::Number => take(left, 40),
        ValueKind::Bool | ValueKind::None | ValueKind::Undefined => take(left, 9),
        _ => take(left, 64),
    }
}

/// How [`to_json`] lays out its text: Python's `json.dumps` separators (`", "` and `": "` on
/// one line, or `","` and a newline with `indent` spaces per level), strings with the
/// characters outside printable ASCII escaped (`ensure_ascii`), `<`, `>`, `&` and `'` escaped
/// so that the text can sit inside HTML (`html_safe`, as minijinja's `tojson` does), and
/// floats as Python writes them (`python_floats`: `1e-05`, `1e+16`, `2.0`; else `0.00001`,
/// `1e16`, `2.0`). Floats that are not finite are `null` either way (Python writes `NaN`,
/// which is not JSON).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonStyle {
    pub indent: Option<usize>,
    pub ensure_ascii: bool,
    pub html_safe: bool,
    pub python_floats: bool,
}

/// The deepest nesting [`to_json`] writes: far beyond any template's data, and well within
/// the stack the recursive serializer needs.
pub const MAX_JSON_DEPTH: usize = 256;

fn too_long(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{what}: the value's text would exceed {MAX_VALUE_TEXT} bytes"),
    )
}

/// `value` as JSON text, refused as soon as the text grows past [`MAX_VALUE_TEXT`]: an
/// estimate of the size beforehand cannot know the indentation nested items add, so the
/// bound is kept by the buffer the text is written into.
pub fn to_json(value: &Value, style: JsonStyle) -> Result<String, Error> {
    let mut out = Bounded(Vec::new());
    let formatter = Layout {
        style,
        level: 0,
        has_value: false,
    };
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(value, &mut ser).map_err(|e| match e.io_error_kind() {
        Some(io::ErrorKind::OutOfMemory) => too_long("tojson"),
        Some(_) => Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: the value is nested more than {MAX_JSON_DEPTH} deep"),
        ),
        None => Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")),
    })?;
    // serde_json writes only whole UTF-8 strings, and every escape is ASCII.
    String::from_utf8(out.0)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))
}

/// A buffer that refuses to hold more than [`MAX_VALUE_TEXT`] bytes.
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if (self.0.len() + buf.len()) as u64 > MAX_VALUE_TEXT {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "text too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// serde_json's formatter for [`JsonStyle`]: its pretty layout (an empty container stays
/// `[]`) with Python's separators.
struct Layout {
    style: JsonStyle,
    level: usize,
    has_value: bool,
}

impl Layout {
    /// Starts an item: the separator, then on a new line when indented.
    fn item<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        let Some(indent) = self.style.indent else {
            return if first { Ok(()) } else { w.write_all(b", ") };
        };
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w, indent)
    }

    /// A newline and the current level's indentation, written a chunk at a time (the
    /// indentation may be wider than any buffer should be, and the writer refuses it first).
    fn newline<W: ?Sized + Write>(&mut self, w: &mut W, indent: usize) -> io::Result<()> {
        const SPACES: [u8; 256] = [b' '; 256];
        w.write_all(b"\n")?;
        for _ in 0..self.level {
            let mut left = indent;
            while left > 0 {
                let n = left.min(SPACES.len());
                w.write_all(&SPACES[..n])?;
                left -= n;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        if self.level >= MAX_JSON_DEPTH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "nested too deep",
            ));
        }
        self.level += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if let Some(indent) = self.style.indent
            && self.has_value
        {
            self.newline(w, indent)?;
        }
        w.write_all(bracket)
    }
}

impl Formatter for Layout {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        if self.style.python_floats {
            w.write_all(python_float(value).as_bytes())
        } else {
            serde_json::ser::CompactFormatter.write_f64(w, value)
        }
    }

    fn write_f32<W: ?Sized + Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(w, value.into())
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let JsonStyle {
            ensure_ascii,
            html_safe,
            ..
        } = self.style;
        if !ensure_ascii && !html_safe {
            return w.write_all(fragment.as_bytes());
        }
        // Python's ensure_ascii escapes all but printable ASCII (DEL too); control characters
        // never reach a fragment.
        let escaped = |c: char| {
            (ensure_ascii && c > '~') || (html_safe && matches!(c, '<' | '>' | '&' | '\''))
        };
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if !escaped(c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{u:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// A finite float as Python's `repr` writes it: the shortest digits that read back as the same
/// float, positional for exponents from -4 to 15 (with `.0` when integral), else scientific
/// with a signed exponent of at least two digits.
fn python_float(v: f64) -> String {
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let text = v.to_string();
        if text.contains('.') {
            text
        } else {
            text + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
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
        let out = super::render(&env, "t", Value::UNDEFINED);
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
            // Lists repeated lazily: fuel would charge their text only once it was built.
            "{{ ['x' * 10000] * 100000000 }}",
            "{{ (['x' * 10000] * 100000000)|string }}",
            "{{ (['x' * 10000] * 100000000)|tojson }}",
            "{{ (['x' * 10000] * 100000000)|pprint }}",
            "{{ [[''] * 100000000] }}",
            "{% set l = ['x' * 10000] * 100000000 %}{{ {'a': l} }}",
            // Every way a list becomes text: a list repeated lazily, and one long string held
            // in many slots of a list built by hand.
            "{{ ['x' * 10000] * 100000000 ~ '' }}",
            "{{ [['x' * 10000] * 100000000]|join(',') }}",
            "{{ (['x' * 10000] * 100000000)|upper }}",
            "{{ '%s'|format(['x' * 10000] * 100000000) }}",
            "{{ (['x' * 10000] * 100000000)|replace('a', 'b') }}",
            "{{ (['x' * 10000] * 100000000)|sort|length }}",
            "{% set l = ['x' * 100000] * 2000 %}{% set m = [l, l, l, l, l, l, l, l, l, l] %}\
             {% set n = [m, m, m, m, m, m, m, m, m, m] %}{{ n ~ '' }}",
            "{% set l = ['x' * 100000] * 2000 %}{% set t = (l, l, l, l, l, l, l, l, l, l) %}\
             {{ (t, t, t, t, t, t, t, t, t, t)|upper }}",
            // The indentation of nested items, and an indentation wider than any text.
            "{% set ns = namespace(l=[''] * 2000000) %}{% for i in range(30) %}\
             {% set ns.l = [ns.l] %}{% endfor %}{{ ns.l|tojson(indent=64) }}",
            "{{ [[1]]|tojson(indent=10000000000000) }}",
            // pprint indents too; a value nested far deeper than any data.
            "{% set ns = namespace(l=[''] * 2000000) %}{% for i in range(30) %}\
             {% set ns.l = [ns.l] %}{% endfor %}{{ ns.l|pprint }}",
            "{% set ns = namespace(l=[]) %}{% for i in range(20000) %}\
             {% set ns.l = [ns.l] %}{% endfor %}{{ ns.l|tojson }}",
            // As deep as fuel goes, then dropped when the render ends.
            // (`range` stops at 100,000 items, so two loops.)
            "{% set ns = namespace(l=[]) %}{% for i in range(10000) %}{% for j in range(10000) %}\
             {% set ns.l = [ns.l] %}{% endfor %}{% endfor %}x",
            "{% set ns = namespace(l=[]) %}{% for i in range(10000) %}{% for j in range(10000) %}\
             {% set ns.l = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ns.l]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]] %}{% endfor %}{% endfor %}x",
        ] {
            let (out, took) = render(bomb);
            assert!(out.is_err(), "{bomb} rendered");
            assert!(took.as_secs_f64() < 3.0, "{bomb} took {took:?}");
        }
        // An ordinary template is well within the budget.
        let (out, _) = render("{% for i in range(1000) %}{{ '{:>4}'.format(i) }}{% endfor %}");
        assert_eq!(out.unwrap().len(), 4000);
        let (out, _) = render("{{ [1, 'a'] }} {{ {'k': [2]}|tojson }} {{ [3]|string }}");
        assert_eq!(out.unwrap(), r#"[1, 'a'] {"k": [2]} [3]"#);
        // minijinja's tojson: `true` indents by 2, and strings are safe inside HTML.
        let (out, _) =
            render("{{ {'k': [[], \"<a'&>\"]}|tojson(true) }}|{{ []|tojson(indent=100) }}");
        assert_eq!(
            out.unwrap(),
            "{\n  \"k\": [\n    [],\n    \"\\u003ca\\u0027\\u0026\\u003e\"\n  ]\n}|[]"
        );
    }

    #[test]
    fn a_value_s_text_is_measured_up_to_the_limit_only() {
        let big = Value::from(vec![Value::from("x".repeat(1 << 20)); 20]);
        assert!(check_text_size(&big, "t").is_err());
        let small = Value::from(vec![Value::from("x".repeat(1 << 20)); 15]);
        assert!(check_text_size(&small, "t").is_ok());
        // A list of 300,000 numbers, some 7 MB as text, is within it.
        let numbers = Value::from(
            (0..300_000)
                .map(|i| i as f64 * 1.5e-300)
                .collect::<Vec<_>>(),
        );
        assert!(check_text_size(&numbers, "t").is_ok());
    }
}
