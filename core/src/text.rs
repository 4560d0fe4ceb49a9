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

/// A time given in milliseconds since the Unix epoch, in UTC, as people read it:
/// `2026-12-04 21:05:07 UTC` (the proleptic Gregorian calendar; no time-zone database).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), with eras of 400 years from 0000-03-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
    #[test]
    fn utc_times_read_as_the_calendar_does() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_868_799_000), "2000-02-29 23:59:59 UTC");
        assert_eq!(super::utc(1_796_418_307_999), "2026-12-04 21:05:07 UTC");
    }

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
