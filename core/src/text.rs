//! Remote text made safe for a terminal: control characters escaped (an agent's `detail`
//! or a coordinator's error body must never reach a terminal as escape sequences), and
//! lengths bounded.

/// The most characters of one remote string `check`'s table prints.
pub const MAX_REMOTE_TEXT: usize = 500;

/// `s` cut to `max` characters, with every control character but the newline escaped.
pub fn printable(s: &str, max: usize) -> String {
    escape(s, max, true)
}

/// `s` cut to `max` characters, with every control character escaped, the newline too:
/// for text that must stay on one line of a table.
pub fn printable_line(s: &str, max: usize) -> String {
    escape(s, max, false)
}

fn escape(s: &str, max: usize, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str(" [...]");
            break;
        }
        if c.is_control() && !(keep_newlines && c == '\n') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_cut() {
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b", 100),
            "a\\u{1b}]0;pwned\\u{7}b"
        );
        assert_eq!(printable(&"x".repeat(10), 4), "xxxx [...]");
        assert_eq!(printable("a\nb", 10), "a\nb");
        assert_eq!(printable_line("a\nb\u{9b}c", 10), "a\\nb\\u{9b}c");
    }
}
