//! The one writer of the Prometheus text format (0.0.4) behind every metrics output: a pull's
//! file or Pushgateway push, `hoist serve`'s `/metrics`, `hoist mount`'s file. Escaping is
//! done here, once: label values escape `\`, `"` and newlines; help text escapes `\` and
//! newlines (the format's two rules).
//!
//! Hand-written rather than `prometheus-client`: that crate writes OpenMetrics, whose
//! `_total`/`# EOF` conventions the textfile collector and the Pushgateway read differently,
//! and these outputs need no registry, only lines.

use std::fmt::{Display, Write as _};

/// A metric family's type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// Text being written: families, each a `# HELP` and `# TYPE` line, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Start the family `name`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample: `name{labels} value` (`name` may carry a suffix: `_bucket`, `_sum`).
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with one sample.
    pub fn single(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.family(name, kind, help).sample(name, labels, value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped_once_here() {
        let mut e = Exposition::new();
        e.single(
            "x_total",
            Kind::Counter,
            "two\nlines \\ here",
            &[("repository", "a\"b\\c\nd")],
            3,
        );
        e.sample("x_total", &[], 4);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP x_total two\\nlines \\\\ here\n# TYPE x_total counter\n\
             x_total{repository=\"a\\\"b\\\\c\\nd\"} 3\nx_total 4\n"
        );
    }
}
