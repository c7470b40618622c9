//! The `[[s3]]` section: one S3-compatible bucket as a replica target.

use omesh_core::addr::host_port;
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
    /// Region (signing); absent: us-east-1 (see [`S3Config::region`]).
    #[serde(default)]
    pub region: Option<String>,
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

fn d_s3_pack() -> ByteSize {
    ByteSize(32 << 20)
}
fn d_s3_part() -> ByteSize {
    ByteSize(16 << 20)
}
fn d_s3_uploads() -> usize {
    3
}

/// Where the AWS SDK really sends this target's requests: the URL its
/// endpoint rules build from `bucket`, `region`, `endpoint` and
/// `path_style`, and how it signs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressing {
    /// The URL of the bucket's requests (before the object key).
    pub url: String,
    /// Its host (a name or an IP literal).
    pub host: String,
    /// Its port (443 or 80 when the URL gives none).
    pub port: u16,
    /// The signing name (`s3`, or `s3-outposts` for an Outposts access point).
    pub signing_name: String,
    /// The signing region (`*` for SigV4a).
    pub signing_region: String,
}

impl S3Config {
    /// The signing region: `region`, or us-east-1 when absent.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or("us-east-1")
    }

    /// Whether `bucket` is an S3 on Outposts access-point ARN.
    pub fn is_outposts_arn(&self) -> bool {
        self.bucket.starts_with("arn:") && self.bucket.split(':').nth(2) == Some("s3-outposts")
    }

    /// Whether `bucket` is an S3 on Outposts access-point alias.
    pub fn is_outposts_alias(&self) -> bool {
        self.bucket.ends_with("--op-s3")
    }

    /// The URL, host and signing the SDK will use, computed with the SDK's
    /// own endpoint resolver from the same parameters the client gets; an
    /// error names the setting and the fix, for the combinations the rules
    /// refuse or get wrong.
    pub fn addressing(&self) -> Result<Addressing, String> {
        use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
        let name = &self.name;
        let ip_endpoint =
            self.endpoint.as_deref().map(host_port).is_some_and(|(h, _)| h.parse::<std::net::IpAddr>().is_ok());
        if self.path_style && (self.is_outposts_arn() || self.is_outposts_alias()) {
            return Err(format!(
                "[[s3]] {name:?}: path_style = true cannot address an S3 on Outposts access point ({}): Outposts buckets are reached only by the access point's host name; remove path_style",
                self.bucket
            ));
        }
        if self.is_outposts_arn() && ip_endpoint {
            return Err(format!(
                "[[s3]] {name:?}: endpoint = {:?} is an IP address, and with an access-point ARN the SDK puts the access point's labels in front of the endpoint's host (NAME-ACCOUNT.OUTPOST.{}), which neither resolves nor passes TLS; remove endpoint (the SDK builds the Outposts host from the ARN; make that name resolve to the CoIP endpoint: docs/config.md, S3 on Outposts)",
                self.endpoint.as_deref().unwrap_or_default(),
                host_port(self.endpoint.as_deref().unwrap_or_default()).0
            ));
        }
        if self.is_outposts_arn()
            && let (Some(region), Some(arn_region)) = (self.region.as_deref(), self.bucket.split(':').nth(3))
            && region != arn_region
        {
            return Err(format!(
                "[[s3]] {name:?}: region = {region:?} but the access point ARN is in {arn_region:?} (the SDK would sign for the ARN's Region); set region = {arn_region:?}"
            ));
        }
        if self.is_outposts_alias() && self.region.is_none() {
            return Err(format!(
                "[[s3]] {name:?}: bucket {:?} is an access point alias, which the SDK signs for `region` (and it ignores endpoint); set region to the Outpost's home Region",
                self.bucket
            ));
        }
        let params = Params::builder()
            .bucket(self.bucket.clone())
            .region(self.region().to_string())
            .set_endpoint(self.endpoint.clone())
            .force_path_style(self.path_style)
            .use_fips(false)
            .use_dual_stack(false)
            .accelerate(false)
            .build()
            .map_err(|e| format!("[[s3]] {name:?}: {e}"))?;
        let resolver = DefaultResolver::new();
        let fut = resolver.resolve_endpoint(&params);
        let mut fut = std::pin::pin!(fut);
        // the default resolver answers at once (a ready future)
        let ep = match std::future::Future::poll(fut.as_mut(), &mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(r) => r.map_err(|e| {
                format!(
                    "[[s3]] {name:?}: the AWS SDK cannot address bucket {:?} with region {:?}, endpoint {:?} and path_style = {}: {e}",
                    self.bucket,
                    self.region(),
                    self.endpoint.as_deref().unwrap_or("(none)"),
                    self.path_style
                )
            })?,
            std::task::Poll::Pending => return Err(format!("[[s3]] {name:?}: the endpoint resolver did not answer")),
        };
        let url = ep.url().to_string();
        let (host, port) = host_port(&url);
        let (mut signing_name, mut signing_region) = ("s3".to_string(), self.region().to_string());
        // the first scheme is the one the SDK prefers (SigV4a when built with it)
        if let Some(first) = ep.auth_schemes().first() {
            if let Some(aws_smithy_types::Document::String(n)) = first.get("signingName") {
                signing_name = n.clone();
            }
            match (first.get("signingRegion"), first.get("signingRegionSet")) {
                (Some(aws_smithy_types::Document::String(r)), _) => signing_region = r.clone(),
                (_, Some(aws_smithy_types::Document::Array(set))) => {
                    signing_region = set
                        .iter()
                        .filter_map(
                            |d| if let aws_smithy_types::Document::String(s) = d { Some(s.as_str()) } else { None },
                        )
                        .collect::<Vec<_>>()
                        .join(",")
                }
                _ => {}
            }
        }
        Ok(Addressing { url, host, port, signing_name, signing_region })
    }

    /// Failure domain of the target.
    pub fn domain(&self) -> String {
        self.domain.clone().unwrap_or_else(|| format!("s3:{}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(toml_text: &str) -> S3Config {
        let mut t: S3Config = toml::from_str(&format!("name = \"s3a\"\n{toml_text}")).unwrap();
        t.name = "s3a".into();
        t
    }

    const ARN: &str = "arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-01234567890123456/accesspoint/backups";

    #[test]
    fn an_outposts_access_point_arn_without_endpoint_goes_to_the_outposts_host_signed_for_s3_outposts() {
        let a = target(&format!("bucket = {ARN:?}\nregion = \"us-west-2\"")).addressing().unwrap();
        assert_eq!(a.url, "https://backups-123456789012.op-01234567890123456.s3-outposts.us-west-2.amazonaws.com");
        assert_eq!(
            (a.host.as_str(), a.port),
            ("backups-123456789012.op-01234567890123456.s3-outposts.us-west-2.amazonaws.com", 443)
        );
        assert_eq!(a.signing_name, "s3-outposts");
    }

    #[test]
    fn an_arn_with_an_ip_endpoint_or_path_style_and_an_alias_without_region_are_refused_naming_the_fix() {
        let e = target(&format!("bucket = {ARN:?}\nregion = \"us-west-2\"\nendpoint = \"https://10.0.9.20\""))
            .addressing()
            .unwrap_err();
        assert!(e.contains("endpoint") && e.contains("10.0.9.20") && e.contains("remove endpoint"), "{e}");
        let e =
            target(&format!("bucket = {ARN:?}\nregion = \"us-west-2\"\npath_style = true")).addressing().unwrap_err();
        assert!(e.contains("path_style") && e.contains("remove path_style"), "{e}");
        let e = target("bucket = \"backups-1a2b3c4d5e6f7g8h9i0j1k2l3m4n5o--op-s3\"").addressing().unwrap_err();
        assert!(e.contains("alias") && e.contains("set region"), "{e}");
        // and with the region given, the alias is addressed (signed for S3 on Outposts)
        let a = target("bucket = \"backups-1a2b3c4d5e6f7g8h9i0j1k2l3m4n5o--op-s3\"\nregion = \"us-west-2\"")
            .addressing()
            .unwrap();
        assert!(a.host.ends_with(".amazonaws.com"), "{a:?}");
    }

    #[test]
    fn an_arn_for_another_region_than_region_is_refused_naming_both() {
        let e = target(&format!("bucket = {ARN:?}\nregion = \"eu-central-1\"")).addressing().unwrap_err();
        assert!(e.contains("us-west-2") && e.contains("eu-central-1"), "{e}");
    }

    #[test]
    fn an_s3_compatible_server_path_style_keeps_its_own_host_and_port() {
        let a =
            target("bucket = \"omesh\"\nendpoint = \"http://127.0.0.1:3900\"\npath_style = true\nregion = \"garage\"")
                .addressing()
                .unwrap();
        assert_eq!(a.url, "http://127.0.0.1:3900/omesh");
        assert_eq!(
            (a.host.as_str(), a.port, a.signing_name.as_str(), a.signing_region.as_str()),
            ("127.0.0.1", 3900, "s3", "garage")
        );
        // virtual-hosted style puts the bucket in front of a named host
        let a = target("bucket = \"omesh\"\nendpoint = \"https://s3.site.example\"").addressing().unwrap();
        assert_eq!(a.host, "omesh.s3.site.example");
    }

    #[test]
    fn a_plain_bucket_without_endpoint_is_the_public_aws_host_for_the_residency_check_to_refuse() {
        let a = target("bucket = \"omesh\"").addressing().unwrap();
        assert_eq!(a.host, "omesh.s3.us-east-1.amazonaws.com");
    }
}
