//! One call into the library from Python: its own tokio runtime, the GIL released while the
//! work runs, Ctrl-C and the progress callback served from the calling thread between ticks.
//!
//! A runtime per call (not one per process) keeps calls from different threads independent
//! and lets an interrupted call stop all it started, as the CLI does at exit: the tasks are
//! dropped where they are and what a pull downloaded stays in its staging folder, so the
//! next call resumes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hoist::transfer::{Event, Observer};
use pyo3::prelude::*;

use crate::NativeError;

/// How often the calling thread wakes to look for Ctrl-C and report progress.
const TICK: Duration = Duration::from_millis(100);
/// How long stopped work may take to let go (the CLI's grace at exit).
const GRACE: Duration = Duration::from_millis(200);

/// Run `work` (built from the observer it must report to) to its end, or until Ctrl-C or
/// the progress callback raises: then the work is stopped and that exception propagates.
///
/// The future is made and run on a thread of its own, so it need not be `Send` (the
/// library's futures are run by `block_on` in the CLI too).
pub fn run<T, F>(
    py: Python<'_>,
    progress: Option<&Py<PyAny>>,
    work: impl FnOnce(Observer) -> F + Send + 'static,
) -> PyResult<T>
where
    F: Future<Output = Result<T, hoist::Error>> + 'static,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hoist")
        .build()
        .map_err(|e| NativeError::new_err((1, format!("cannot start the runtime: {e}"))))?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let observer: Observer = {
        let tally = tally.clone();
        Arc::new(move |event| tally.lock().expect("tally").on(event))
    };
    let outcome: Arc<Outcome<T>> = Arc::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let outcome = outcome.clone();
        std::thread::Builder::new()
            .name("hoist-call".into())
            .spawn(move || {
                let result = runtime.block_on(async move {
                    tokio::select! {
                        result = work(observer) => Some(result),
                        _ = stopped => None,
                    }
                });
                // What a stopped call left running is dropped here, as the CLI does at exit.
                runtime.shutdown_timeout(GRACE);
                outcome.set(result);
            })
            .map_err(|e| NativeError::new_err((1, format!("cannot start a thread: {e}"))))?
    };
    let raised = loop {
        // A worker that panicked ends without a result: its join reports it.
        if py.detach(|| outcome.wait(TICK)) || worker.is_finished() {
            break None;
        }
        if let Err(raised) = py
            .check_signals()
            .and_then(|()| report(py, progress, &tally))
        {
            break Some(raised);
        }
    };
    if let Some(raised) = raised {
        let _ = stop.send(());
        py.detach(|| worker.join()).ok();
        return Err(raised);
    }
    py.detach(|| worker.join())
        .map_err(|_| NativeError::new_err((1, "hoist panicked".to_string())))?;
    let result = outcome
        .take()
        .ok_or_else(|| NativeError::new_err((1, "hoist stopped without a result".to_string())))?;
    let value = result.map_err(|e| NativeError::new_err((e.exit_code() as i32, e.to_string())))?;
    tally.lock().expect("tally").finish();
    report(py, progress, &tally)?;
    Ok(value)
}

/// The worker's result, once it is there.
struct Outcome<T> {
    value: Mutex<(bool, Option<Result<T, hoist::Error>>)>,
    ready: Condvar,
}

impl<T> Default for Outcome<T> {
    fn default() -> Self {
        Outcome {
            value: Mutex::new((false, None)),
            ready: Condvar::new(),
        }
    }
}

impl<T> Outcome<T> {
    fn set(&self, result: Option<Result<T, hoist::Error>>) {
        *self.value.lock().expect("outcome") = (true, result);
        self.ready.notify_all();
    }

    /// Has the worker finished? Waits at most `tick` for it.
    fn wait(&self, tick: Duration) -> bool {
        let guard = self.value.lock().expect("outcome");
        let (guard, _) = self
            .ready
            .wait_timeout_while(guard, tick, |(done, _)| !*done)
            .expect("outcome");
        guard.0
    }

    fn take(&self) -> Option<Result<T, hoist::Error>> {
        self.value.lock().expect("outcome").1.take()
    }
}

/// Call the progress callback with `(done, total, files_done, files_total, file)` when
/// something changed since the last call.
fn report(py: Python<'_>, progress: Option<&Py<PyAny>>, tally: &Mutex<Tally>) -> PyResult<()> {
    let Some(callback) = progress else {
        return Ok(());
    };
    let snapshot = {
        let mut t = tally.lock().expect("tally");
        if !std::mem::take(&mut t.changed) {
            return Ok(());
        }
        (
            t.done.min(t.total),
            t.total,
            t.files_done,
            t.files,
            t.last.clone(),
        )
    };
    callback.call1(py, snapshot).map(drop)
}

/// The events of one call, summed: bytes moved, and a file's whole size once it is done
/// (a file skipped, linked from the cache or resumed moves fewer bytes than it has).
#[derive(Default)]
struct Tally {
    total: u64,
    files: usize,
    done: u64,
    files_done: usize,
    /// Bytes seen so far per file still in flight.
    moving: HashMap<String, u64>,
    last: String,
    changed: bool,
}

impl Tally {
    fn on(&mut self, event: &Event) {
        match event {
            // A push with its image-volume form starts twice: both count.
            Event::Start { files, bytes, .. } => {
                self.total += bytes;
                self.files += files;
            }
            Event::Progress { name, bytes } => {
                self.done += bytes;
                *self.moving.entry(name.clone()).or_default() += bytes;
                self.last.clone_from(name);
            }
            Event::Done { name, size, .. } => {
                let seen = self.moving.remove(name).unwrap_or(0);
                self.done += size.saturating_sub(seen);
                self.files_done += 1;
                self.last.clone_from(name);
            }
        }
        self.changed = true;
    }

    /// The work ended well: every byte is accounted for.
    fn finish(&mut self) {
        if self.done < self.total || self.files_done < self.files {
            self.done = self.total;
            self.files_done = self.files;
            self.changed = true;
        }
    }
}
