//! The registry client: the OCI distribution API over one pooled HTTP/1.1 client.
//!
//! HTTP/2 is left out of the build on purpose: bulk blob transfers over several connections
//! are faster than multiplexing them onto one TCP stream (see ANCHORS.md).

pub mod auth;
mod body;
pub mod budget;
mod client;
mod error;
pub mod mirrors;
mod referrers;
mod retry;
mod transport;
mod upload;

pub use auth::{Credential, Credentials};
pub(crate) use body::{read_bounded, Unread, MAX_ERROR_BODY};
pub use client::{BlobResponse, RegistryClient};
pub(crate) use error::chain as error_chain;
pub use error::RegistryError;
pub use retry::{parse_retry_after, RetryPolicy, MAX_RETRY_AFTER};
pub use transport::{TransportOptions, MIRROR_CONNECT};
pub use upload::UploadBody;
