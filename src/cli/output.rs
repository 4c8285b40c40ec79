//! Rendering engine events: JSON lines off a TTY (for logs and init containers), short
//! human lines on a TTY.

use std::io::IsTerminal;
use std::sync::Arc;

use hoist::transfer::{Event, Observer};

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
        ProgressMode::Json => Arc::new(|event: &Event| {
            eprintln!(
                "{}",
                serde_json::to_string(event).expect("events serialise")
            );
        }),
        ProgressMode::Plain => Arc::new(|event: &Event| match event {
            Event::Start {
                reference,
                files,
                bytes,
            } => eprintln!("{reference}: {files} files, {}", human_bytes(*bytes)),
            Event::Done {
                name, size, action, ..
            } => {
                eprintln!(
                    "  {:<11} {:>10}  {name}",
                    format!("{action:?}").to_lowercase(),
                    human_bytes(*size)
                )
            }
        }),
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
