//! A validator for the Prometheus text exposition format (version 0.0.4), enough to tell
//! a real `/metrics` body from an error page or a truncated response.

/// Why a body is not Prometheus text.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct PromTextError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Checks `body` line by line and returns the number of samples. A body with no sample at
/// all is refused: an exporter always exposes something.
pub fn validate(body: &str) -> Result<usize, PromTextError> {
    let mut samples = 0;
    for (i, line) in body.lines().enumerate() {
        let err = |message: &str| PromTextError {
            line: i + 1,
            message: message.to_owned(),
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            match words.next() {
                Some("HELP") => {
                    words
                        .next()
                        .filter(|n| is_metric_name(n))
                        .ok_or_else(|| err("HELP without a metric name"))?;
                }
                Some("TYPE") => {
                    words
                        .next()
                        .filter(|n| is_metric_name(n))
                        .ok_or_else(|| err("TYPE without a metric name"))?;
                    match words.next() {
                        Some("counter" | "gauge" | "histogram" | "summary" | "untyped") => {}
                        _ => return Err(err("TYPE with an unknown metric type")),
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        let (name_end, rest) = match line.find(['{', ' ', '\t']) {
            Some(p) => (p, &line[p..]),
            None => return Err(err("a sample needs a value")),
        };
        if !is_metric_name(&line[..name_end]) {
            return Err(err("invalid metric name"));
        }
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            let close = find_label_end(labels).ok_or_else(|| err("unterminated label set"))?;
            &labels[close + 1..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| err("a sample needs a value"))?;
        if !is_float(value) {
            return Err(err("sample value is not a number"));
        }
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| err("timestamp is not an integer"))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing text after the sample"));
        }
        samples += 1;
    }
    if samples == 0 {
        return Err(PromTextError {
            line: 0,
            message: "no samples".to_owned(),
        });
    }
    Ok(samples)
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_float(s: &str) -> bool {
    matches!(s, "NaN" | "+Inf" | "-Inf") || s.parse::<f64>().is_ok()
}

/// Index of the `}` closing a label set, honouring quoted values with escapes.
fn find_label_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (in_quotes, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_quotes = false,
            (false, _, '"') => in_quotes = true,
            (false, _, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_coredns_style_text() {
        let body = "# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.\n# TYPE coredns_dns_requests_total counter\ncoredns_dns_requests_total{family=\"1\",proto=\"udp\",server=\"dns://:53\",type=\"A\",zone=\".\"} 42\ncoredns_build_info{version=\"1.11.1\",revision=\"ae2bbc2\",goversion=\"go1.20\"} 1\nprocess_start_time_seconds 1.7e+09 1700000000000\nweird{l=\"a}b\\\"c\"} +Inf\n";
        assert_eq!(validate(body), Ok(4));
    }

    #[test]
    fn refuses_html_empty_and_broken_lines() {
        assert!(validate("<html><body>502 Bad Gateway</body></html>").is_err());
        assert_eq!(validate("# only comments\n").map_err(|e| e.line), Err(0));
        assert_eq!(
            validate("ok 1\nbroken{a=\"b\" 2\n").map_err(|e| e.line),
            Err(2)
        );
        assert_eq!(
            validate("m one\n").map_err(|e| e.message),
            Err("sample value is not a number".into())
        );
        assert!(validate("# TYPE m blob\nm 1\n").is_err());
    }
}
