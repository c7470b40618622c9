//! The `[[s3]]` section: one S3-compatible bucket as a replica target.

use omesh_core::units::ByteSize;
use serde::Deserialize;
use std::path::PathBuf;

/// `[[s3]]`: an S3-compatible bucket on site as a replica target.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Target name (shown as a replica holder).
    pub name: String,
    /// Endpoint URL (S3 on Outposts endpoint or any S3 server); absent:
    /// the SDK's default for the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Bucket name, or an S3 on Outposts access point ARN or alias.
    pub bucket: String,
    /// Region (signing).
    #[serde(default = "d_region")]
    pub region: String,
    /// Path-style addressing (most S3-compatible servers).
    #[serde(default)]
    pub path_style: bool,
    /// Key prefix inside the bucket (e.g. "site-1/").
    #[serde(default)]
    pub prefix: String,
    /// Storage class for new objects (S3 on Outposts: "OUTPOSTS").
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Extra CA certificates (PEM) trusted for the endpoint's TLS.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Failure-domain label (default: "s3:NAME").
    #[serde(default)]
    pub domain: Option<String>,
    /// Pack object size.
    #[serde(default = "d_s3_pack")]
    pub pack_size: ByteSize,
    /// Packs larger than this are uploaded in parts of this size.
    #[serde(default = "d_s3_part")]
    pub part_size: ByteSize,
    /// Parallel uploads.
    #[serde(default = "d_s3_uploads")]
    pub parallel_uploads: usize,
}

fn d_region() -> String {
    "us-east-1".into()
}
fn d_s3_pack() -> ByteSize {
    ByteSize(32 << 20)
}
fn d_s3_part() -> ByteSize {
    ByteSize(16 << 20)
}
fn d_s3_uploads() -> usize {
    3
}

impl S3Config {
    /// Failure domain of the target.
    pub fn domain(&self) -> String {
        self.domain.clone().unwrap_or_else(|| format!("s3:{}", self.name))
    }
}
