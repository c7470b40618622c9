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
    #[serde(default)]
    pub bucket: String,
    /// S3 on Outposts: the access point's ARN
    /// (`arn:aws:s3-outposts:REGION:ACCOUNT:outpost/OP-ID/accesspoint/NAME`).
    /// The form that cannot be misaddressed: it takes the place of `bucket`,
    /// the Region comes from the ARN, the storage class is OUTPOSTS, and
    /// `endpoint` and `path_style` are refused (the SDK builds the
    /// access point's host name from the ARN; see [`S3Config::settle`]).
    #[serde(default)]
    pub outpost_access_point: Option<String>,
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

/// The parts of an S3 on Outposts access-point ARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutpostArn {
    /// The partition (`aws`, `aws-us-gov`, …).
    pub partition: String,
    /// The Outpost's home Region.
    pub region: String,
    /// The 12-digit account.
    pub account: String,
    /// The Outpost id (`op-` and 17 hex digits).
    pub outpost: String,
    /// The access point's name.
    pub access_point: String,
}

impl OutpostArn {
    /// Parse `arn:PARTITION:s3-outposts:REGION:ACCOUNT:outpost/OP-ID/accesspoint/NAME`;
    /// the error says which part is wrong.
    pub fn parse(arn: &str) -> Result<OutpostArn, String> {
        let shape = "arn:aws:s3-outposts:REGION:ACCOUNT:outpost/OUTPOST-ID/accesspoint/NAME (`aws s3control list-access-points --account-id ACCOUNT --bucket OUTPOSTS-BUCKET-ARN` prints it)";
        let bad = |what: &str| format!("{arn:?} is not an S3 on Outposts access point ARN ({what}); expected {shape}");
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [arn_, partition, service, region, account, resource] = parts[..] else {
            return Err(bad("it needs six ':'-separated fields"));
        };
        if arn_ != "arn" || partition.is_empty() {
            return Err(bad("it must start with arn:aws:"));
        }
        if service != "s3-outposts" {
            return Err(bad(&format!("service {service:?}, not s3-outposts")));
        }
        let region_ok =
            !region.is_empty() && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            return Err(bad(&format!("Region {region:?}")));
        }
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad(&format!("account {account:?} is not 12 digits")));
        }
        let r: Vec<&str> = resource.split('/').collect();
        let ["outpost", outpost, "accesspoint", name] = r[..] else {
            return Err(bad(&format!("resource {resource:?} is not outpost/OUTPOST-ID/accesspoint/NAME")));
        };
        let op_ok =
            outpost.strip_prefix("op-").is_some_and(|h| h.len() == 17 && h.chars().all(|c| c.is_ascii_hexdigit()));
        if !op_ok {
            return Err(bad(&format!("Outpost id {outpost:?} is not op- and 17 hex digits")));
        }
        let name_ok = (3..=50).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !name_ok {
            return Err(bad(&format!("access point name {name:?} (3 to 50 lowercase letters, digits and '-')")));
        }
        Ok(OutpostArn {
            partition: partition.into(),
            region: region.into(),
            account: account.into(),
            outpost: outpost.into(),
            access_point: name.into(),
        })
    }
}

impl S3Config {
    /// Turn the `outpost_access_point` form into the settings the client
    /// uses (`bucket` = the ARN, `region` from it, storage class OUTPOSTS),
    /// refusing every setting that would send its requests elsewhere. Run
    /// once, when the config is loaded.
    pub fn settle(&mut self) -> Result<(), String> {
        let name = self.name.clone();
        let Some(arn_text) = self.outpost_access_point.clone() else {
            if self.bucket.is_empty() {
                return Err(format!(
                    "[[s3]] {name:?}: set bucket (a bucket name) or, for S3 on Outposts, outpost_access_point (the access point's ARN)"
                ));
            }
            return Ok(());
        };
        let arn = OutpostArn::parse(&arn_text).map_err(|e| format!("[[s3]] {name:?}: outpost_access_point = {e}"))?;
        if !self.bucket.is_empty() {
            return Err(format!(
                "[[s3]] {name:?}: set bucket or outpost_access_point, not both (outpost_access_point names the bucket through its access point); remove bucket"
            ));
        }
        if let Some(ep) = &self.endpoint {
            return Err(format!(
                "[[s3]] {name:?}: endpoint = {ep:?} cannot be used with outpost_access_point: the requests go to the access point's own host name, {}-{}.{}.s3-outposts.{}.amazonaws.com, which must resolve to the Outpost's CoIP endpoint (docs/config.md, \"S3 on Outposts\"); remove endpoint",
                arn.access_point, arn.account, arn.outpost, arn.region
            ));
        }
        if self.path_style {
            return Err(format!(
                "[[s3]] {name:?}: path_style = true cannot be used with outpost_access_point (S3 on Outposts is reached only by the access point's host name); remove path_style"
            ));
        }
        match self.region.as_deref() {
            Some(r) if r != arn.region => {
                return Err(format!(
                    "[[s3]] {name:?}: region = {r:?} but the access point is in {:?} (its ARN); remove region (it comes from the ARN)",
                    arn.region
                ));
            }
            _ => self.region = Some(arn.region.clone()),
        }
        match self.storage_class.as_deref() {
            Some("OUTPOSTS") | None => self.storage_class = Some("OUTPOSTS".into()),
            Some(c) => {
                return Err(format!(
                    "[[s3]] {name:?}: storage_class = {c:?}: S3 on Outposts stores only the OUTPOSTS class; remove storage_class"
                ));
            }
        }
        self.bucket = arn_text;
        Ok(())
    }

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
        // an Outposts host reached as a plain bucket is signed for `s3`,
        // which S3 on Outposts refuses on every request
        if host.contains(".s3-outposts.") && signing_name != "s3-outposts" {
            return Err(format!(
                "[[s3]] {name:?}: {url} is an S3 on Outposts host, but bucket {:?} with endpoint {:?} is addressed and signed as plain S3, which S3 on Outposts refuses; use outpost_access_point = \"arn:aws:s3-outposts:…:accesspoint/NAME\" instead of bucket and endpoint",
                self.bucket,
                self.endpoint.as_deref().unwrap_or("(none)")
            ));
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
        let t: S3Config = toml::from_str(&format!("name = \"s3a\"\n{toml_text}")).unwrap();
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

    fn settled(toml_text: &str) -> Result<S3Config, String> {
        let mut t = target(toml_text);
        t.settle().map(|()| t)
    }

    #[test]
    fn the_outpost_access_point_form_addresses_the_access_point_host_with_the_arns_region_and_class() {
        let t = settled(&format!("outpost_access_point = {ARN:?}")).unwrap();
        assert_eq!((t.bucket.as_str(), t.region()), (ARN, "us-west-2"));
        assert_eq!(t.storage_class.as_deref(), Some("OUTPOSTS"));
        let a = t.addressing().unwrap();
        assert_eq!(a.host, "backups-123456789012.op-01234567890123456.s3-outposts.us-west-2.amazonaws.com");
        assert_eq!((a.port, a.signing_name.as_str()), (443, "s3-outposts"));
        // SigV4a (the sigv4a feature) signs for every Region
        assert_eq!(a.signing_region, "*");
        // the same region written out is fine
        settled(&format!("outpost_access_point = {ARN:?}\nregion = \"us-west-2\"\nstorage_class = \"OUTPOSTS\""))
            .unwrap();
    }

    #[test]
    fn the_outpost_access_point_form_refuses_every_setting_that_would_send_it_elsewhere() {
        let cases = [
            ("endpoint = \"https://10.0.9.20\"", "remove endpoint"),
            ("endpoint = \"https://s3.site.example\"", "remove endpoint"),
            ("path_style = true", "remove path_style"),
            ("bucket = \"backups\"", "not both"),
            ("region = \"eu-central-1\"", "remove region"),
            ("storage_class = \"STANDARD\"", "only the OUTPOSTS class"),
        ];
        for (extra, says) in cases {
            let e = settled(&format!("outpost_access_point = {ARN:?}\n{extra}")).unwrap_err();
            assert!(e.contains("s3a") && e.contains(says), "{extra}: {e}");
        }
        let arns = [
            ("arn:aws:s3:us-west-2:123456789012:accesspoint/backups", "not s3-outposts"),
            ("arn:aws:s3-outposts:us-west-2:12345:outpost/op-01234567890123456/accesspoint/backups", "12 digits"),
            ("arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-0123/accesspoint/backups", "17 hex"),
            ("arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-01234567890123456/bucket/backups", "accesspoint"),
            ("arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-01234567890123456/accesspoint/Backups", "name"),
            ("backups", "six"),
        ];
        for (arn, says) in arns {
            let e = settled(&format!("outpost_access_point = {arn:?}")).unwrap_err();
            assert!(
                e.contains("outpost_access_point") && e.contains(says) && e.contains("expected arn:aws:s3-outposts"),
                "{arn}: {e}"
            );
        }
        // the access point's host as a plain bucket would be signed for s3
        let e = target(
            "bucket = \"omesh\"\nregion = \"us-west-2\"\npath_style = true\nendpoint = \"https://backups-123456789012.op-01234567890123456.s3-outposts.us-west-2.amazonaws.com\"",
        )
        .addressing()
        .unwrap_err();
        assert!(e.contains("signed as plain S3") && e.contains("use outpost_access_point"), "{e}");
        // neither form
        let e = settled("region = \"us-west-2\"").unwrap_err();
        assert!(e.contains("set bucket") && e.contains("outpost_access_point"), "{e}");
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
