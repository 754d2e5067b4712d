//! The two text formats `GET /metrics` speaks and the choice between them:
//! OpenMetrics 1.0.0 (what `prometheus-client` writes, and what Prometheus
//! asks for first) and the Prometheus text exposition format 0.0.4 (what
//! older scrapers and many tools ask for with `Accept: text/plain`), made
//! from the OpenMetrics text by [`to_text_004`].
//!
//! This module only turns text into text and a header into a choice; the
//! admin server reads the header and serves the answer.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A text exposition format of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text, as `prometheus-client` writes it.
    OpenMetrics,
    /// The Prometheus text exposition format 0.0.4.
    Text004,
}

impl Format {
    /// The format to answer a request with, from its `Accept` header value
    /// (several headers joined with `,`; `None`: no header).
    ///
    /// OpenMetrics when the header allows `application/openmetrics-text`
    /// with a quality at least that of `text/plain` (so also when it is
    /// absent, empty or `*/*`); the 0.0.4 text when only `text/plain` (or
    /// `text/*`) is acceptable or preferred, or when OpenMetrics is refused
    /// outright (`q=0`). A header that allows neither otherwise
    /// (`application/json`) gets OpenMetrics, the default, rather than a
    /// 406: every client that scrapes us today keeps working. Version
    /// parameters are not compared: the OpenMetrics text is valid as 1.0.0
    /// and 0.0.1, and the 0.0.4 text (legacy metric names only) is valid
    /// for a `text/plain; version=1.0.0` asker too.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Format::OpenMetrics;
        };
        let ranges = media_ranges(accept);
        let om_q = quality(&ranges, "application", "openmetrics-text");
        let om = om_q.unwrap_or(0.0);
        let text = quality(&ranges, "text", "plain").unwrap_or(0.0);
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else if text > 0.0 || om_q == Some(0.0) {
            // OpenMetrics refused outright (`q=0`): the other format.
            Format::Text004
        } else {
            Format::OpenMetrics
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// One media range of an `Accept` header: type, subtype (lowercase) and
/// quality.
#[derive(Debug, Clone, PartialEq)]
struct MediaRange {
    kind: String,
    subtype: String,
    q: f64,
}

/// The media ranges of an `Accept` header value. Ranges that do not
/// parse (no `/`, a `q` that is not a number in 0..=1) are left out.
fn media_ranges(accept: &str) -> Vec<MediaRange> {
    split_outside_quotes(accept, ',')
        .into_iter()
        .filter_map(|range| {
            let mut parts = split_outside_quotes(range, ';').into_iter();
            let (kind, subtype) = parts.next()?.trim().split_once('/')?;
            let (kind, subtype) = (kind.trim(), subtype.trim());
            if kind.is_empty() || subtype.is_empty() {
                return None;
            }
            let mut q = 1.0;
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = v
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))?;
                }
            }
            Some(MediaRange {
                kind: kind.to_ascii_lowercase(),
                subtype: subtype.to_ascii_lowercase(),
                q,
            })
        })
        .collect()
}

/// The quality `ranges` give `kind/subtype`: that of the most specific
/// matching ranges (`kind/subtype` over `kind/*` over `*/*`), the highest
/// among equally specific ones; `None` when no range matches.
fn quality(ranges: &[MediaRange], kind: &str, subtype: &str) -> Option<f64> {
    ranges
        .iter()
        .filter_map(|r| {
            let specificity = match (r.kind.as_str(), r.subtype.as_str()) {
                (k, s) if k == kind && s == subtype => 2,
                (k, "*") if k == kind => 1,
                ("*", "*") => 0,
                _ => return None,
            };
            Some((specificity, r.q))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, q)| q)
}

/// `s` split at `sep` where it is not inside a double-quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text: no `# EOF`
/// and no `# UNIT` lines; a counter family's `# HELP`/`# TYPE` name
/// carries `_total` (as its samples do) and an info family's `_info`; no
/// `_created` samples; exemplars dropped; timestamps from seconds to
/// milliseconds; OpenMetrics-only types written as 0.0.4 ones (`unknown`
/// as `untyped`, `info` and `stateset` as `gauge`, `gaugehistogram` as
/// `untyped`). Samples and labels are otherwise copied as they are (both
/// formats write them alike).
pub fn to_text_004(openmetrics: &str) -> String {
    // The type of each family, from its TYPE line (which follows HELP).
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, ty)| (name, ty.trim()))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // 0.0.4 escapes only `\\` and `\n` in HELP text.
            let help = help.replace("\\\"", "\"");
            let name = family_name(name, types.get(name).copied());
            let _ = writeln!(out, "# HELP {name} {help}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let ty = ty.trim();
            let _ = writeln!(
                out,
                "# TYPE {} {}",
                family_name(name, Some(ty)),
                type_004(ty)
            );
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# EOF`, `# UNIT`: not in 0.0.4.
        } else if let Some(sample) = sample_004(line, &types) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// A family's name in 0.0.4 (where TYPE and HELP name the samples).
fn family_name(name: &str, ty: Option<&str>) -> String {
    match ty {
        Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
        Some("info") if !name.ends_with("_info") => format!("{name}_info"),
        _ => name.to_string(),
    }
}

/// A family type in 0.0.4.
fn type_004(ty: &str) -> &'static str {
    match ty {
        "counter" => "counter",
        "gauge" | "info" | "stateset" => "gauge",
        "histogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// One sample line in 0.0.4, or `None` for a `_created` sample (not in
/// 0.0.4).
fn sample_004(line: &str, types: &HashMap<&str, &str>) -> Option<String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if let Some(family) = name.strip_suffix("_created")
        && matches!(
            types.get(family),
            Some(&("counter" | "histogram" | "summary"))
        )
    {
        return None;
    }
    let labels_end = if line[name_end..].starts_with('{') {
        name_end + closing_brace(&line[name_end..])? + 1
    } else {
        name_end
    };
    // Value, an optional timestamp, then ` # ` and an exemplar: the value
    // and timestamp hold no `#`.
    let rest = line[labels_end..].split('#').next().unwrap_or_default();
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    let mut sample = format!("{} {value}", &line[..labels_end]);
    if let Some(ts) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
        let _ = write!(sample, " {}", (ts * 1000.0).round() as i64);
    }
    Some(sample)
}

/// The index of the `}` closing the label set `s` starts with (quoted
/// values may hold braces and escaped quotes).
fn closing_brace(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_scrapers_get_openmetrics_and_text_plain_askers_get_0_0_4() {
        for accept in [
            // Prometheus 2.x, default scrape protocols.
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            // Prometheus 3.x.
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
             application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;\
             escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            "*/*",
            "",
            "application/json",
            "application/*",
            "application/openmetrics-text; q=0.5, text/plain; q=0.5",
        ] {
            assert_eq!(
                Format::negotiate(Some(accept)),
                Format::OpenMetrics,
                "{accept}"
            );
        }
        assert_eq!(Format::negotiate(None), Format::OpenMetrics);
        for accept in [
            "text/plain",
            "text/plain;version=0.0.4",
            "TEXT/Plain; charset=utf-8",
            "text/*",
            "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5",
            "application/openmetrics-text;q=0,*/*",
            "application/openmetrics-text;q=0,text/plain;q=0.1",
            "application/*;q=0.1, text/plain;q=0.2",
            // The one type offered, refused (an outside tester's case).
            "application/openmetrics-text;q=0",
        ] {
            assert_eq!(Format::negotiate(Some(accept)), Format::Text004, "{accept}");
        }
    }

    #[test]
    fn accept_ranges_parse_quoted_commas_and_skip_bad_qualities() {
        let r = media_ranges(r#"text/plain;foo="a,b";q=0.3, bogus, x/y;q=high, */*;q=2"#);
        assert_eq!(
            r,
            vec![MediaRange {
                kind: "text".into(),
                subtype: "plain".into(),
                q: 0.3
            }]
        );
        // The most specific range wins, even with a lower quality.
        let r = media_ranges("text/*;q=1, text/plain;q=0.2, */*");
        assert_eq!(quality(&r, "text", "plain"), Some(0.2));
        assert_eq!(quality(&r, "text", "html"), Some(1.0));
        assert_eq!(quality(&r, "application", "json"), Some(1.0));
        assert_eq!(quality(&media_ranges("text/plain"), "image", "png"), None);
    }

    #[test]
    fn openmetrics_becomes_0_0_4_text() {
        let om = "\
# HELP ringhost_visits Stops made at this node.
# TYPE ringhost_visits counter
ringhost_visits_total 2
ringhost_visits_created 1700000000.123
# HELP ringhost_lap_seconds Lap \\\"time\\\".
# TYPE ringhost_lap_seconds histogram
# UNIT ringhost_lap_seconds seconds
ringhost_lap_seconds_sum 0.003
ringhost_lap_seconds_count 1
ringhost_lap_seconds_bucket{le=\"0.005\"} 1 # {trace_id=\"a#b\"} 0.003 1700000000.5
ringhost_lap_seconds_bucket{le=\"+Inf\"} 1
ringhost_lap_seconds_created 1700000000.0
# HELP ringhost_build Build.
# TYPE ringhost_build info
ringhost_build_info{version=\"0.1 #}{\\\"x\\\"\"} 1
# TYPE ringhost_odd unknown
ringhost_odd 3 1700000000.25
# HELP ringhost_particle_generation Generation.
# TYPE ringhost_particle_generation gauge
ringhost_particle_generation 7
# EOF
";
        let want = "\
# HELP ringhost_visits_total Stops made at this node.
# TYPE ringhost_visits_total counter
ringhost_visits_total 2
# HELP ringhost_lap_seconds Lap \"time\".
# TYPE ringhost_lap_seconds histogram
ringhost_lap_seconds_sum 0.003
ringhost_lap_seconds_count 1
ringhost_lap_seconds_bucket{le=\"0.005\"} 1
ringhost_lap_seconds_bucket{le=\"+Inf\"} 1
# HELP ringhost_build_info Build.
# TYPE ringhost_build_info gauge
ringhost_build_info{version=\"0.1 #}{\\\"x\\\"\"} 1
# TYPE ringhost_odd untyped
ringhost_odd 3 1700000000250
# HELP ringhost_particle_generation Generation.
# TYPE ringhost_particle_generation gauge
ringhost_particle_generation 7
";
        assert_eq!(to_text_004(om), want);
    }

    #[test]
    fn the_nodes_metrics_convert_with_every_family_named_by_its_samples() {
        let m = super::super::Metrics::new();
        m.visit(3, Some(std::time::Duration::from_millis(2)));
        m.station_fault("tick");
        let text = to_text_004(&m.encode());
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&ty), "{line}");
                if ty == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                families.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    families.iter().any(|f| name == f
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f))),
                    "{line}: not in a family declared before it"
                );
            }
        }
        assert!(
            text.contains("# TYPE ringhost_visits_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nringhost_visits_total 1\n"), "{text}");
        assert!(
            text.contains("\nringhost_station_faults_total{station=\"tick\"} 1\n"),
            "{text}"
        );
    }
}
