//! Rendering engine events: progress bars on a terminal (one per active file plus a total
//! with rate and ETA), plain lines anywhere (a line per file, a total every few seconds), or
//! JSON lines (for logs and init containers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoist::transfer::{Event, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::global::{ProgressMode, Ui};

pub fn observer(ui: Ui) -> Observer {
    match ui.progress {
        ProgressMode::None | ProgressMode::Auto => hoist::transfer::silent(),
        ProgressMode::Json => {
            let state = Mutex::new(JsonProgress::default());
            Arc::new(move |event: &Event| state.lock().expect("progress lock").on(event))
        }
        ProgressMode::Plain => {
            let state = Mutex::new(PlainProgress::default());
            Arc::new(move |event: &Event| state.lock().expect("progress lock").on(event))
        }
        ProgressMode::Bars => {
            let bars = Mutex::new(Bars::new());
            Arc::new(move |event: &Event| bars.lock().expect("progress lock").on(event))
        }
    }
}

/// Plain lines, for a terminal or a log: the start, each file as it is done, and the total
/// with its rate at most every 5 seconds.
#[derive(Default)]
struct PlainProgress {
    total: u64,
    done: u64,
    started: Option<Instant>,
    last: Option<Instant>,
}

impl PlainProgress {
    fn on(&mut self, event: &Event) {
        match event {
            Event::Start {
                reference,
                files,
                bytes,
            } => {
                self.total = *bytes;
                self.started = Some(Instant::now());
                self.last = self.started;
                eprintln!(
                    "{reference}: {}, {}",
                    count(*files, "file"),
                    human_bytes(*bytes)
                );
            }
            Event::Progress { bytes, .. } => {
                self.done += bytes;
                let now = Instant::now();
                if self.last.is_none_or(|t| now - t >= Duration::from_secs(5)) {
                    self.last = Some(now);
                    let elapsed = self
                        .started
                        .map_or(1e-3, |s| (now - s).as_secs_f64().max(1e-3));
                    eprintln!(
                        "  {} of {} ({}/s)",
                        human_bytes(self.done),
                        human_bytes(self.total),
                        human_bytes((self.done as f64 / elapsed) as u64)
                    );
                }
            }
            Event::Done {
                name, size, action, ..
            } => eprintln!(
                "  {:<10} {:>10}  {name}",
                action_word(*action),
                human_bytes(*size)
            ),
        }
    }
}

fn action_word(action: hoist::transfer::Action) -> String {
    format!("{action:?}").to_lowercase()
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
                    action_word(*action),
                    human_bytes(*size)
                ));
            }
        }
    }
}

/// Every bar is cleared when the command ends, interrupted or not: nothing stale is left on
/// the terminal above the summary or the error line.
impl Drop for Bars {
    fn drop(&mut self) {
        for (_, bar) in self.files.drain() {
            bar.finish_and_clear();
        }
        if let Some(total) = &self.total {
            total.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string(value).expect("reports serialise")
    );
}

/// Sizes in binary units, as the progress bars show them (KiB, MiB, GiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1 file`, `3 files`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_read_as_words() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(0, "file"), "0 files");
        assert_eq!(count(2, "blob"), "2 blobs");
    }
}
