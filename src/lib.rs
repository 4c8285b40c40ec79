//! hoist: ship ML models as OCI artifacts.
//!
//! # Using the library
//!
//! Describe how to reach registries in [`Settings`], let a [`Context`] build the [`Target`]
//! a [`Reference`] names (the local [`Store`] or a registry through a [`RegistryClient`]),
//! then [`push_folder`], [`pull`], [`copy`] or [`verify_folder`]. Every pull verifies each
//! byte against its digest before a file appears. Errors map to the CLI's exit codes through
//! [`Error::exit_code`].
//!
//! ```
//! use hoist::{pack::PackOptions, transfer, Context, PullOptions, PushOptions, Reference, Settings};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let work = tempfile::tempdir()?;
//! let model = work.path().join("model");
//! std::fs::create_dir(&model)?;
//! std::fs::write(model.join("config.json"), br#"{"model_type":"bert"}"#)?;
//! std::fs::write(model.join("model.safetensors"), vec![7u8; 4096])?;
//!
//! // `my-model:v1` has no registry host: it names the local store.
//! let ctx = Context::new(Settings {
//!     store: Some(work.path().join("store")),
//!     ..Settings::default()
//! });
//! let reference = Reference::parse("my-model:v1")?;
//! let target = ctx.target(&reference)?;
//! let out = work.path().join("out");
//! let runtime = tokio::runtime::Runtime::new()?;
//! let (pushed, pulled) = runtime.block_on(async {
//!     let (_, pushed) = hoist::push_folder(
//!         &model,
//!         &PackOptions::default(),
//!         &target,
//!         &["v1".to_string()],
//!         &PushOptions::default(),
//!         transfer::silent(),
//!     )
//!     .await?;
//!     let pulled = hoist::pull(&target, "v1", &out, &PullOptions::default(), transfer::silent())
//!         .await?;
//!     Ok::<_, hoist::Error>((pushed, pulled))
//! })?;
//! assert_eq!(pushed.digest, pulled.digest);
//! assert_eq!(std::fs::read(out.join("config.json"))?, br#"{"model_type":"bert"}"#);
//! # Ok(())
//! # }
//! ```
//!
//! Cargo features: `serve` (the registry server), `mount` (the FUSE view) and `bench` are on
//! by default; `default-features = false` leaves the push, pull and copy library without
//! axum, fuser or plotters.
//!
//! # Modules
//!
//! The modules follow the data path:
//!
//! ```text
//! model dir ──pack──▶ store / registry ──transfer──▶ materialize ──▶ volume
//! ```
//!
//! What each owns is in one table, in `docs/architecture.md` (a test keeps it whole).

#[cfg(feature = "bench")]
pub mod bench;
pub mod chunks;
pub mod context;
#[cfg(feature = "csi")]
pub mod csi;
pub mod digest;
pub mod error;
pub mod fsutil;
pub mod hub;
pub mod materialize;
pub mod metrics;
#[cfg(feature = "mount")]
pub mod mount;
pub mod oci;
pub mod pack;
pub mod reference;
pub mod registry;
pub mod reserved;
#[cfg(feature = "serve")]
pub mod serve;
pub mod sign;
pub mod stamp;
pub mod store;
pub mod transfer;
pub mod wan;

#[cfg(test)]
mod testkit;

pub use context::{Context, Settings};
pub use error::{Error, ExitCode};
pub use reference::Reference;
pub use registry::RegistryClient;
pub use store::Store;
pub use transfer::{
    copy, pull, push_folder, verify_folder, PullOptions, PullReport, PushOptions, PushReport,
    Target,
};
