//! Host and port of an endpoint: a URL (`https://host[:port]/…`) or a
//! `host:port` address, IPv6 literals in brackets.

/// Host and port of `url_or_addr`; the scheme's port (443, 80) when the URL
/// gives none, 0 for a bare host without a port.
pub fn host_port(url_or_addr: &str) -> (String, u16) {
    let s = url_or_addr.trim();
    let (rest, default_port) = if let Some(r) = s.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = s.strip_prefix("http://") {
        (r, 80)
    } else {
        (s, 0)
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').unwrap_or((h, ""));
        return (h.to_string(), p.trim_start_matches(':').parse().unwrap_or(default_port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().unwrap_or(default_port)),
        _ => (hostport.to_string(), default_port),
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn urls_and_addresses() {
        assert_eq!(host_port("https://10.0.9.20"), ("10.0.9.20".into(), 443));
        assert_eq!(host_port("http://s3.local:3900/x"), ("s3.local".into(), 3900));
        assert_eq!(host_port("srv-b:7443"), ("srv-b".into(), 7443));
        assert_eq!(host_port("[fd00::1]:7443"), ("fd00::1".into(), 7443));
        assert_eq!(host_port("https://[fd00::1]/b"), ("fd00::1".into(), 443));
    }
}
