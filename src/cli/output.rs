//! Rendering engine events: progress bars on a terminal (one per active file plus a total
//! with rate and ETA), periodic JSON lines otherwise (for logs and init containers).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoist::transfer::{Event, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{GlobalArgs, ProgressMode};

pub fn observer(global: &GlobalArgs) -> Observer {
    let mode = match (global.quiet, global.progress) {
        (true, _) => ProgressMode::None,
        (false, ProgressMode::Auto) if std::io::stderr().is_terminal() => ProgressMode::Plain,
        (false, ProgressMode::Auto) => ProgressMode::Json,
        (false, mode) => mode,
    };
    match mode {
        ProgressMode::None | ProgressMode::Auto => hoist::transfer::silent(),
        ProgressMode::Json => {
            let state = Mutex::new(JsonProgress::default());
            Arc::new(move |event: &Event| state.lock().expect("progress lock").on(event))
        }
        ProgressMode::Plain => {
            let bars = Mutex::new(Bars::new());
            Arc::new(move |event: &Event| bars.lock().expect("progress lock").on(event))
        }
    }
}

/// JSON lines: start and per-file events as they happen, byte progress at most once a second.
#[derive(Default)]
struct JsonProgress {
    total: u64,
    done: u64,
    started: Option<Instant>,
    last: Option<Instant>,
}

impl JsonProgress {
    fn on(&mut self, event: &Event) {
        match event {
            Event::Start { bytes, .. } => {
                self.total = *bytes;
                self.started = Some(Instant::now());
                emit(event);
            }
            Event::Progress { bytes, .. } => {
                self.done += bytes;
                let now = Instant::now();
                if self.last.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                    self.last = Some(now);
                    let elapsed = self
                        .started
                        .map_or(0.0, |s| (now - s).as_secs_f64())
                        .max(1e-3);
                    let rate = self.done as f64 / elapsed;
                    let eta = if rate > 0.0 {
                        self.total.saturating_sub(self.done) as f64 / rate
                    } else {
                        0.0
                    };
                    eprintln!(
                        "{}",
                        serde_json::json!({"event": "progress", "bytes": self.done, "total": self.total,
                            "bytes_per_second": rate.round(), "eta_seconds": (eta * 10.0).round() / 10.0})
                    );
                }
            }
            Event::Done { .. } => emit(event),
        }
    }
}

fn emit(event: &Event) {
    eprintln!(
        "{}",
        serde_json::to_string(event).expect("events serialise")
    );
}

/// indicatif bars: a total, and one per file while it downloads.
struct Bars {
    multi: MultiProgress,
    total: Option<ProgressBar>,
    files: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            total: None,
            files: HashMap::new(),
        }
    }

    fn on(&mut self, event: &Event) {
        match event {
            Event::Start {
                reference,
                files,
                bytes,
            } => {
                let bar = self.multi.add(ProgressBar::new(*bytes));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                bar.set_message(format!("{reference} ({files} files)"));
                self.total = Some(bar);
            }
            Event::Progress { name, bytes } => {
                if let Some(total) = &self.total {
                    total.inc(*bytes);
                }
                let multi = &self.multi;
                let bar = self.files.entry(name.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::no_length());
                    bar.set_style(
                        ProgressStyle::with_template("  {msg:40} {bytes:>10} {bytes_per_sec:>12}")
                            .expect("template"),
                    );
                    bar.set_message(name.clone());
                    bar
                });
                bar.inc(*bytes);
            }
            Event::Done {
                name, size, action, ..
            } => {
                if let Some(bar) = self.files.remove(name) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                } else if let Some(total) = &self.total {
                    // Files that needed no download still count towards the total.
                    if !matches!(action, hoist::transfer::Action::Downloaded) {
                        total.inc(*size);
                    }
                }
                let _ = self.multi.println(format!(
                    "  {:<10} {:>10}  {name}",
                    format!("{action:?}").to_lowercase(),
                    human_bytes(*size)
                ));
            }
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(total) = &self.total {
            total.finish_and_clear();
        }
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string(value).expect("reports serialise")
    );
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
