//! Connections to one registry (or mirror) host across every download of this process: the
//! pull engine's (`transfer::fetch`: the CSI plugin's volumes, a Python program's concurrent
//! pulls and `open_safetensors`) and `hoist serve`'s pull-through fetches. They share one
//! node's link to a registry, so each grows within its own ceiling and all of them within
//! this one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Semaphore;

/// Connections to one registry host at once, all downloads of this process together (the
/// pull engine's default ceiling: one pull alone may use all of them).
pub const REGISTRY_BUDGET: usize = 64;

/// The budget of `host`.
pub fn registry_budget(host: &str) -> Arc<Semaphore> {
    budget_with(host, REGISTRY_BUDGET)
}

/// The budget of `host`, made with `size` places the first time it is asked for.
pub fn budget_with(host: &str, size: usize) -> Arc<Semaphore> {
    static BUDGETS: OnceLock<Mutex<HashMap<String, Arc<Semaphore>>>> = OnceLock::new();
    let mut budgets = BUDGETS
        .get_or_init(Mutex::default)
        .lock()
        .expect("budget lock");
    budgets
        .entry(host.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(size)))
        .clone()
}
