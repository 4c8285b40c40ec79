//! hoist: ship ML models as OCI artifacts.
//!
//! The modules follow the data path:
//!
//! ```text
//! model dir ──pack──▶ store / registry ──transfer──▶ materialize ──▶ volume
//! ```
//!
//! | module          | owns                                                               |
//! |-----------------|--------------------------------------------------------------------|
//! | [`reference`]   | parsing `[registry/]repo[:tag][@digest]`, local-store references   |
//! | [`digest`]      | sha256 digests, hashing while bytes flow                           |
//! | [`oci`]         | media types, manifests, ModelPack config, layer → file mapping     |
//! | [`pack`]        | a model folder → layers, config and manifest                       |
//! | [`store`]       | the local OCI-layout store (embedded default, cache)               |
//! | [`registry`]    | the distribution API client                                        |
//! | [`transfer`]    | push, pull and copy engines over stores and registries             |
//! | [`materialize`] | verified blobs → files in the output folder, atomically and safely |
//! | [`mount`]       | `hoist mount`: a lazy FUSE view of an artifact, fetched as read    |
//! | [`serve`]       | `hoist serve`: the distribution API over the store                 |
//! | [`metrics`]     | Prometheus text for operators (`kaito_model_download_*`)           |
//! | [`bench`]       | `hoist bench`: images vs artifacts, built, pushed and pulled       |
//! | [`wan`]         | a loopback WAN emulator (bandwidth caps, latency, faults)          |

pub mod bench;
pub mod context;
pub mod digest;
pub mod error;
pub mod fsutil;
pub mod materialize;
pub mod metrics;
pub mod mount;
pub mod oci;
pub mod pack;
pub mod reference;
pub mod registry;
pub mod serve;
pub mod store;
pub mod transfer;
pub mod wan;

pub use error::{Error, ExitCode};
