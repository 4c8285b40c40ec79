//! What reaches stderr besides progress and the error line. A command prints the library's
//! warnings (a download resumed, a mirror left, a registry throttling) as plain
//! `hoist: warning: …` lines, or JSON events with `--progress json`, and nothing with `-q` or
//! `--progress none`. Long-running servers (`serve`, `mount`, `wan-proxy`) log with
//! timestamps. `--debug` or `HOIST_LOG` turn on the full log. No colour off a terminal.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use super::global::{ProgressMode, Ui};

/// How this process logs.
pub enum Logging {
    /// Warnings as `hoist: warning:` lines or JSON events (`json`).
    Notices {
        json: bool,
    },
    /// A timestamped log at this filter (servers, `--debug`, `HOIST_LOG`).
    Log(String),
    Off,
}

impl Logging {
    pub fn choose(debug: bool, server: bool, ui: Ui) -> Logging {
        match std::env::var("HOIST_LOG") {
            Ok(filter) if !filter.is_empty() => return Logging::Log(filter),
            _ => {}
        }
        if debug {
            return Logging::Log("hoist=debug".into());
        }
        if server {
            return Logging::Log("hoist=warn".into());
        }
        match ui.progress {
            _ if ui.quiet => Logging::Off,
            ProgressMode::None => Logging::Off,
            ProgressMode::Json => Logging::Notices { json: true },
            _ => Logging::Notices { json: false },
        }
    }

    pub fn init(self) {
        match self {
            Logging::Off => {}
            Logging::Notices { json } => {
                tracing_subscriber::registry().with(Notices { json }).init();
            }
            Logging::Log(filter) => {
                tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_new(&filter)
                            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hoist=warn")),
                    )
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .init();
            }
        }
    }
}

/// hoist's warnings (and errors), one line each.
struct Notices {
    json: bool,
}

impl<S: Subscriber> Layer<S> for Notices {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || !meta.target().starts_with("hoist") {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if self.json {
            eprintln!(
                "{}",
                serde_json::json!({"event": "warning", "message": message.0})
            );
        } else {
            eprintln!("hoist: warning: {}", message.0);
        }
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}
