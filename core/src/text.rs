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

/// `s` cut to `max` characters (then " [...]"), nothing escaped: for bounding text that
/// is escaped where it is shown.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{} [...]", &s[..at]),
        None => s.to_owned(),
    }
}

/// Whether `c` changes how the text around it reads without being seen: Unicode's
/// bidirectional controls (which reorder a line: U+202E can show `rm -rf /` as something
/// else) and the invisible format characters (zero-width spaces and joiners, the word
/// joiner, the byte-order mark, the soft hyphen).
pub fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

fn escape(s: &str, max: usize, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str(" [...]");
            break;
        }
        if (c.is_control() && !(keep_newlines && c == '\n')) || is_invisible_format(c) {
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

    #[test]
    fn bidi_and_invisible_format_characters_are_escaped() {
        // Issue 22, row 8: U+202E, U+2066, U+200B and U+FEFF passed in every mode.
        for (c, shown) in [
            ('\u{202E}', "\\u{202e}"),
            ('\u{2066}', "\\u{2066}"),
            ('\u{200B}', "\\u{200b}"),
            ('\u{FEFF}', "\\u{feff}"),
        ] {
            let s = format!("ok{c}txt");
            assert_eq!(printable(&s, 100), format!("ok{shown}txt"));
            assert_eq!(printable_line(&s, 100), format!("ok{shown}txt"));
        }
        // Ordinary non-ASCII text stays as it is.
        assert_eq!(printable("naïve – 東京", 100), "naïve – 東京");
    }

    #[test]
    fn clip_cuts_at_characters() {
        assert_eq!(clip("héllo", 2), "hé [...]");
        assert_eq!(clip("hi", 2), "hi");
    }
}
