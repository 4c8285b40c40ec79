//! The referrers API (`GET /v2/<name>/referrers/<digest>`), with a clear "not supported" for
//! registries that predate it (distribution 2.8 answers 404), so callers can use the tag
//! fallback (`sha256-<hex>`) instead.

use reqwest::{header, Method, StatusCode};

use super::auth::Action;
use super::{RegistryClient, RegistryError};
use crate::digest::Digest;
use crate::oci::{Descriptor, Index};

impl RegistryClient {
    /// The manifests that name `subject`, or `None` when the registry has no referrers API.
    pub async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<Descriptor>>, RegistryError> {
        let mut url = self.api_url(repository, &["referrers", subject.as_str()])?;
        if let Some(t) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", t);
        }
        let req = self
            .request(Method::GET, url)
            .header(header::ACCEPT, crate::oci::media::OCI_INDEX);
        let resp = self
            .send(req, repository, Action::Pull, "listing referrers")
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Ok(None),
            s if s.is_success() => {
                let filtered = resp.headers().contains_key("OCI-Filters-Applied");
                let bytes = super::body::read_capped(resp, super::body::MAX_JSON_BODY)
                    .await
                    .ok_or_else(|| RegistryError::BodyTooLarge {
                        registry: self.registry.clone(),
                        what: "referrers list",
                        limit: super::body::MAX_JSON_BODY,
                    })?;
                let index: Index =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Transfer {
                        registry: self.registry.clone(),
                        context: "reading referrers".into(),
                        detail: format!("not an OCI index: {e}"),
                    })?;
                let mut list = index.manifests;
                if let (Some(t), false) = (artifact_type, filtered) {
                    list.retain(|d| d.artifact_type.as_deref() == Some(t));
                }
                Ok(Some(list))
            }
            _ => Err(self.status_error("GET", resp).await),
        }
    }
}
