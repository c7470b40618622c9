//! Building the S3 client for both S3 on Outposts and S3-compatible
//! servers, and turning SDK errors into messages that name the target and
//! say what to do.
//!
//! - Credentials: the standard AWS chain (environment, profile, instance
//!   role) through aws-config; nothing secret in omesh's config.
//! - TLS: rustls with ring (no C toolchain needed), system roots plus an
//!   optional `ca_bundle` for private on-site CAs.
//! - Checksums only when the operation requires them: many S3-compatible
//!   servers reject the SDK's newer default CRC checksums and trailers.
//! - Retries: the SDK's standard mode (exponential backoff with jitter on
//!   throttling, 5xx and timeouts), six attempts; never an answer that the
//!   storage is out of capacity (S3 on Outposts' insufficient capacity,
//!   507), which retrying cannot fix.

use crate::config::S3Config;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::dns::ResolveDns;
use std::time::Duration;

/// A DNS resolver hook (the residency policy checks every address).
pub type Resolver = aws_smithy_runtime_api::client::dns::SharedDnsResolver;

/// S3 failures, each naming the target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// Endpoint unreachable or timing out.
    #[error(
        "{target} is unreachable while {op}: {message}; check the endpoint URL, the network and that the S3 service runs"
    )]
    Unreachable {
        /// target description
        target: String,
        /// operation
        op: String,
        /// cause
        message: String,
    },
    /// Credentials refused.
    #[error(
        "{target} refused the credentials while {op} ({code}: {message}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile or the instance role, and the bucket policy"
    )]
    Credentials {
        /// target
        target: String,
        /// operation
        op: String,
        /// S3 error code
        code: String,
        /// message
        message: String,
    },
    /// Bucket missing.
    #[error("{target}: the bucket does not exist ({message}); create it or fix `bucket` in the [[s3]] section")]
    NoBucket {
        /// target
        target: String,
        /// message
        message: String,
    },
    /// Out of space (S3 on Outposts capacity).
    #[error(
        "{target} is full ({code}: {message}): on S3 on Outposts the rack's S3 capacity, shared by every bucket on it, is exhausted; free capacity on the rack (or, on another S3 server, its disk or quota); not retried"
    )]
    Full {
        /// target
        target: String,
        /// code
        code: String,
        /// message
        message: String,
    },
    /// An object larger than the service takes.
    #[error("{target} refused an object as too large while {op} ({message}); lower [[s3]] pack_size (and part_size)")]
    TooLarge {
        /// target
        target: String,
        /// operation
        op: String,
        /// message
        message: String,
    },
    /// Other S3 error.
    #[error("{target} failed while {op}: {code}: {message}")]
    Service {
        /// target
        target: String,
        /// operation
        op: String,
        /// code
        code: String,
        /// message
        message: String,
    },
    /// Body transfer failed.
    #[error("{target}: transfer failed: {message}")]
    Transfer {
        /// target
        target: String,
        /// cause
        message: String,
    },
    /// Stored data is damaged.
    #[error("{target}: {what} is damaged: {reason}")]
    Damaged {
        /// target
        target: String,
        /// object
        what: String,
        /// problem
        reason: String,
    },
    /// Client configuration.
    #[error("S3 target configuration: {0}")]
    Config(String),
    /// Local store problem while uploading.
    #[error("{0}")]
    Local(String),
}

impl S3Error {
    /// CLI exit code class: 2 for configuration-like problems.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            S3Error::Credentials { .. } | S3Error::NoBucket { .. } | S3Error::Config(_) | S3Error::TooLarge { .. }
        )
    }
}

/// Map an SDK error.
pub fn map_err<E>(target: &str, op: &str, e: SdkError<E, aws_smithy_runtime_api::http::Response>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let target = target.to_string();
    let op = op.to_string();
    let chain = || aws_sdk_s3::error::DisplayErrorContext(&e).to_string().chars().take(600).collect::<String>();
    match &e {
        // the network: the connection could not be made or timed out
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            S3Error::Unreachable { target, op, message: chain() }
        }
        // before anything was sent: no credentials, an endpoint the
        // SDK's rules refuse, a request it cannot build
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => S3Error::Config(format!(
            "{target} while {op}: {}; check the credentials (instance role, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile) and the [[s3]] bucket, region and endpoint settings",
            chain()
        )),
        SdkError::TimeoutError(_) => S3Error::Unreachable { target, op, message: "timed out".into() },
        _ => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            let code = e.code().unwrap_or("").to_string();
            let message = e.message().unwrap_or("").to_string();
            classify(target, op, code, status, message, || format!("{e}"))
        }
    }
}

/// An S3 service answer (error code, HTTP status) as an error that says
/// what to do.
fn classify(
    target: String,
    op: String,
    code: String,
    status: u16,
    message: String,
    describe: impl FnOnce() -> String,
) -> S3Error {
    match (code.as_str(), status) {
        ("NoSuchBucket", _) => S3Error::NoBucket { target, message: if message.is_empty() { code } else { message } },
        ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "InvalidToken" | "ExpiredToken", _)
        | (_, 401 | 403) => {
            S3Error::Credentials { target, op, code: if code.is_empty() { status.to_string() } else { code }, message }
        }
        ("EntityTooLarge", _) => S3Error::TooLarge { target, op, message },
        (c, _) if is_capacity(c) => S3Error::Full { target, code, message },
        (_, 507) => S3Error::Full { target, code, message },
        (_, 404) if op == "checking the bucket" => {
            S3Error::NoBucket { target, message: if code.is_empty() { "404".into() } else { code } }
        }
        ("", 0) => S3Error::Unreachable { target, op, message: describe() },
        _ => S3Error::Service { target, op, code: if code.is_empty() { status.to_string() } else { code }, message },
    }
}

/// Build a client for a target.
pub async fn build(cfg: &S3Config, resolver: Option<Resolver>) -> Result<aws_sdk_s3::Client, S3Error> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let mut trust = TrustStore::empty().with_native_roots(true);
    if let Some(ca) = &cfg.ca_bundle {
        let pem = std::fs::read(ca)
            .map_err(|e| S3Error::Config(format!("[[s3]] {:?}: ca_bundle {}: {e}", cfg.name, ca.display())))?;
        trust = trust.with_pem_certificate(pem);
    }
    let tls_ctx = TlsContext::builder().with_trust_store(trust).build().map_err(|e| S3Error::Config(e.to_string()))?;
    let builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls_ctx);
    let http = match resolver {
        Some(r) => builder.build_with_resolver(r),
        None => builder.build_https(),
    };
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region().to_string()))
        .http_client(http)
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(6)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        .load()
        .await;
    let mut b = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(cfg.path_style)
        .retry_classifier(NoRetryWhenFull)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(ep) = &cfg.endpoint {
        b = b.endpoint_url(ep);
    }
    Ok(aws_sdk_s3::Client::from_conf(b.build()))
}

/// Whether an S3 error code says the storage is out of capacity: S3 on
/// Outposts answers an insufficient-capacity error (its code is not
/// documented, so any code naming capacity counts), other servers
/// `NotEnoughSpace` / `QuotaExceeded`.
fn is_capacity(code: &str) -> bool {
    code.contains("Capacity") || matches!(code, "NotEnoughSpace" | "QuotaExceeded")
}

/// The `<Code>` of an S3 XML error body (bounded search, no allocation).
fn error_code(body: &[u8]) -> Option<&str> {
    let body = &body[..body.len().min(64 << 10)];
    let start = body.windows(6).position(|w| w == b"<Code>")? + 6;
    let len = body[start..].iter().take(256).position(|b| *b == b'<')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

/// Never retry an answer that the storage is out of capacity: retrying
/// cannot help, and six attempts only delay the error the operator needs.
#[derive(Debug)]
struct NoRetryWhenFull;

impl aws_smithy_runtime_api::client::retries::classifiers::ClassifyRetry for NoRetryWhenFull {
    fn classify_retry(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::InterceptorContext,
    ) -> aws_smithy_runtime_api::client::retries::classifiers::RetryAction {
        use aws_smithy_runtime_api::client::retries::classifiers::RetryAction;
        let Some(r) = ctx.response() else { return RetryAction::NoActionIndicated };
        if r.status().is_success() {
            return RetryAction::NoActionIndicated;
        }
        let full = r.status().as_u16() == 507 || r.body().bytes().and_then(error_code).is_some_and(is_capacity);
        if full { RetryAction::RetryForbidden } else { RetryAction::NoActionIndicated }
    }

    fn name(&self) -> &'static str {
        "omesh: no retry when the storage is out of capacity"
    }
}

/// Veto function: (host, address) -> Err(reason) to refuse.
pub type AddressCheck = std::sync::Arc<dyn Fn(&str, std::net::IpAddr) -> Result<(), String> + Send + Sync>;

/// Adapter: resolve with the system resolver, then let `check` veto any
/// address (the residency policy).
#[derive(Clone)]
pub struct CheckedResolver {
    /// The veto.
    pub check: AddressCheck,
}

impl std::fmt::Debug for CheckedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckedResolver")
    }
}

impl ResolveDns for CheckedResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        let check = self.check.clone();
        aws_smithy_runtime_api::client::dns::DnsFuture::new(async move {
            let addrs: Vec<std::net::IpAddr> = tokio::net::lookup_host((name, 0))
                .await
                .map_err(aws_smithy_runtime_api::client::dns::ResolveDnsError::new)?
                .map(|a| a.ip())
                .collect();
            for a in &addrs {
                check(name, *a)
                    .map_err(|m| aws_smithy_runtime_api::client::dns::ResolveDnsError::new(std::io::Error::other(m)))?;
            }
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str, status: u16) -> S3Error {
        classify("rack".into(), "writing".into(), code.into(), status, "m".into(), || "x".into())
    }

    #[test]
    fn service_answers_become_errors_that_say_what_to_do() {
        // S3 on Outposts out of capacity
        let e = c("InsufficientCapacity", 503);
        assert!(matches!(e, S3Error::Full { .. }), "{e}");
        assert!(e.to_string().contains("rack") && e.to_string().contains("free capacity"), "{e}");
        assert!(matches!(c("", 507), S3Error::Full { .. }));
        assert!(matches!(c("SignatureDoesNotMatch", 403), S3Error::Credentials { .. }));
        assert!(matches!(c("", 403), S3Error::Credentials { .. }));
        assert!(matches!(c("NoSuchBucket", 404), S3Error::NoBucket { .. }));
        assert!(matches!(c("", 0), S3Error::Unreachable { .. }));
        assert!(matches!(c("SlowDown", 503), S3Error::Service { .. }));
        // too large is not "full"
        let e = c("EntityTooLarge", 400);
        assert!(matches!(e, S3Error::TooLarge { .. }) && e.is_config() && e.to_string().contains("pack_size"), "{e}");
    }

    /// A one-shot HTTP server on loopback that answers every request with
    /// `status` and an S3 error `code`, counting the requests.
    async fn answering(status: u16, code: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = n.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // headers, then the body its content-length gives
                        let Ok(k) = c.read(&mut chunk).await else { return };
                        if k == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        buf.drain(..end + 4 + len);
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body =
                            format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>");
                        let r = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if c.write_all(r.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, n)
    }

    async fn put_to(url: &str) -> S3Error {
        let cfg: S3Config = toml::from_str(&format!(
            "name = \"rack\"\nbucket = \"b\"\nendpoint = \"{url}\"\npath_style = true\nregion = \"garage\"\n"
        ))
        .unwrap();
        let client = build(&cfg, None).await.unwrap();
        let e = client.put_object().bucket("b").key("k").body(vec![7u8; 100].into()).send().await.unwrap_err();
        map_err("S3 target \"rack\"", "writing a pack", e)
    }

    #[tokio::test]
    async fn an_out_of_capacity_answer_is_not_retried_and_says_the_rack_is_full() {
        // SAFETY: nextest runs each test in its own process
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
        let (url, n) = answering(503, "InsufficientCapacityException").await;
        let e = put_to(&url).await;
        assert!(matches!(e, S3Error::Full { .. }), "{e}");
        assert!(e.to_string().contains("shared by every bucket"), "{e}");
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 1, "the capacity error was retried");
        // the control: a throttling answer is retried
        let (url, n) = answering(503, "SlowDown").await;
        let e = put_to(&url).await;
        assert!(matches!(e, S3Error::Service { .. }), "{e}");
        assert!(n.load(std::sync::atomic::Ordering::SeqCst) > 1, "a throttling answer was not retried");
    }

    #[test]
    fn error_codes_are_read_from_bounded_xml() {
        assert_eq!(error_code(b"<Error><Code>NoSuchKey</Code></Error>"), Some("NoSuchKey"));
        assert_eq!(error_code(b"<Error><Code>unterminated"), None);
        assert_eq!(error_code(b"no xml"), None);
        assert!(is_capacity("InsufficientCapacityException") && !is_capacity("SlowDown"));
    }

    #[derive(Debug)]
    struct Cause(&'static str);
    impl std::fmt::Display for Cause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Cause {}

    fn sdk(
        e: SdkError<aws_sdk_s3::operation::head_bucket::HeadBucketError, aws_smithy_runtime_api::http::Response>,
    ) -> S3Error {
        map_err("S3 target \"rack\"", "checking the bucket", e)
    }

    #[test]
    fn failures_before_sending_are_configuration_errors_with_their_cause_and_network_ones_are_not() {
        use aws_smithy_runtime_api::client::result::ConnectorError;
        // what the SDK reports when it has no credentials or cannot build the endpoint
        let e = sdk(SdkError::dispatch_failure(ConnectorError::other(
            Box::new(Cause("no credentials in the provider chain")),
            None,
        )));
        assert!(e.is_config(), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("rack") && m.contains("no credentials in the provider chain") && m.contains("instance role"),
            "{m}"
        );
        let e = sdk(SdkError::construction_failure(Cause(
            "Invalid configuration: Outpost Id must only contain a-z, A-Z, 0-9 and `-`",
        )));
        assert!(e.is_config() && e.to_string().contains("Outpost Id"), "{e}");
        // the network stays "unreachable", with the whole cause
        let e = sdk(SdkError::dispatch_failure(ConnectorError::io(Box::new(Cause("connection refused")))));
        assert!(matches!(e, S3Error::Unreachable { .. }) && !e.is_config(), "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
