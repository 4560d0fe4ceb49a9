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

/// A `/metrics` body's format, as the scraper's `Accept` header asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 (what Prometheus asks for first).
    OpenMetrics,
    /// The classic text format 0.0.4 (curl, `promtool check metrics`, older scrapers).
    Classic,
}

impl Exposition {
    /// OpenMetrics when `accept` lists `application/openmetrics-text` with a weight above
    /// zero, the classic format otherwise (no header, `*/*`, `text/plain`).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants_om = accept.is_some_and(|a| {
            a.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let q_zero = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
            })
        });
        if wants_om {
            Self::OpenMetrics
        } else {
            Self::Classic
        }
    }

    /// The body's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition in the classic text format: a counter family is
/// named by its `_total` sample, an info family becomes a gauge named `_info`, `unknown`
/// becomes `untyped`; `# UNIT`, `# EOF`, `_created` samples and exemplars are dropped.
pub fn openmetrics_to_classic(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // HELP comes before TYPE in OpenMetrics, and its name depends on the type.
    let mut help: Option<(&str, &str)> = None;
    let mut counters: Vec<String> = Vec::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => {
                    counters.push(family.to_owned());
                    (format!("{family}_total"), "counter")
                }
                "info" => (format!("{family}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (family.to_owned(), kind),
                "stateset" => (family.to_owned(), "gauge"),
                _ => (family.to_owned(), "untyped"),
            };
            if let Some((h, text)) = help.take() {
                let h = if h == family { name.as_str() } else { h };
                out.push_str(&format!("# HELP {h} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            // # UNIT, # EOF and other comments have no classic form.
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if let Some(base) = name.strip_suffix("_created")
            && counters.iter().any(|c| c == base)
        {
            continue;
        }
        // An exemplar follows the value after " # ", outside the label set.
        let body_start = if line[name_end..].starts_with('{') {
            find_label_end(&line[name_end + 1..]).map_or(line.len(), |e| name_end + 1 + e + 1)
        } else {
            name_end
        };
        let sample = match line[body_start..].find(" # ") {
            Some(p) => &line[..body_start + p],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
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

    #[test]
    fn the_accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        for classic in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("application/openmetrics-text;q=0"),
        ] {
            assert_eq!(
                Exposition::negotiate(classic),
                Exposition::Classic,
                "{classic:?}"
            );
        }
    }

    #[test]
    fn openmetrics_becomes_classic_text() {
        let om = "# HELP rounds Rounds finished.\n# TYPE rounds counter\nrounds_total 3\nrounds_created 1.7e9\n# HELP build Build.\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup{a=\"x # y\"} 1 # {trace=\"t\"} 1\n# EOF\n";
        let text = openmetrics_to_classic(om);
        assert_eq!(
            text,
            "# HELP rounds_total Rounds finished.\n# TYPE rounds_total counter\nrounds_total 3\n# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n# HELP up Up.\n# TYPE up gauge\nup{a=\"x # y\"} 1\n"
        );
        assert_eq!(validate(&text), Ok(3));
    }
}
