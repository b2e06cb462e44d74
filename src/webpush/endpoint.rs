//! `EndpointPolicy`: which push endpoints the server will post to, and the
//! address filter that keeps host names away from internal addresses.
//!
//! The endpoint of a [`Subscription`](super::Subscription) comes from the
//! browser, that is from whoever posts to the subscribe route, and the server
//! `POST`s to it. Two layers keep that from becoming a request forger:
//!
//! 1. The URL, when the subscription is made and again before each request
//!    ([`EndpointPolicy`]): `https:` only, no IP-literal host, no `localhost`
//!    or single-label name, no user name or password, and optionally only
//!    the hosts of an allow-list.
//! 2. The addresses, when the dispatcher's own HTTP client connects
//!    ([`PublicAddressesOnly`], wired into reqwest's DNS resolver hook): every
//!    address a name resolves to that is not a public unicast address is
//!    dropped, and a name left with none is refused. The check is on the
//!    addresses the connection is then made to, so there is no window
//!    between checking and connecting (no DNS rebinding).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::error::{Error, cut};

/// Which push endpoints a server accepts and posts to.
///
/// The default policy (`EndpointPolicy::new()`, `EndpointPolicy::default()`)
/// is the one [`Subscription::new`](super::Subscription::new),
/// [`Subscription::from_json`](super::Subscription::from_json), serde and
/// [`Dispatcher::new`](super::Dispatcher::new) apply. It accepts an endpoint
/// only if:
///
/// - its scheme is `https:` (an `http:` endpoint is
///   [`Error::EndpointRefused`]; any other scheme is
///   [`Error::InvalidSubscription`]);
/// - its host is a name, not an IP address, in any of the forms the URL
///   standard reads as one (`https://127.0.0.1/`, `https://[::1]/`,
///   `https://2130706433/`, `https://0x7f.1/`, `https://0177.0.0.1/`);
/// - the name is not `localhost` or `*.localhost`, and has a dot (a
///   single-label name such as `https://intranet/` resolves through the
///   server's DNS search domains);
/// - the URL has no user name or password.
///
/// Browsers only ever hand out such endpoints (`https://fcm.googleapis.com/…`,
/// `https://updates.push.services.mozilla.com/…`, `https://web.push.apple.com/…`,
/// `https://*.notify.windows.com/…`).
///
/// Two calls change it, each a decision that reads as one in review:
///
/// - [`allow_hosts`](Self::allow_hosts): only these push services
///   (exact names and `*.suffix` patterns).
/// - [`allow_insecure_endpoints_for_testing`](Self::allow_insecure_endpoints_for_testing):
///   `http:`, IP literals and local names, for a test push service on this
///   machine.
///
/// Whatever the policy, the [`Dispatcher`](super::Dispatcher)'s own HTTP
/// client never connects to a non-public address it got from DNS (loopback,
/// private, link-local, CGNAT, multicast, …): see the module docs.
///
/// ```
/// use htmx_sse::webpush::{EndpointPolicy, Error, Subscription};
///
/// const P256DH: &str = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
/// const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
///
/// // The default: https: push services by name.
/// assert!(Subscription::new("https://fcm.googleapis.com/fcm/send/x", P256DH, AUTH).is_ok());
/// for endpoint in ["http://push.example.net/x", "https://10.0.0.5/x", "https://2130706433/x", "https://localhost/x"] {
///     let e = Subscription::new(endpoint, P256DH, AUTH).unwrap_err();
///     assert!(matches!(e, Error::EndpointRefused { .. }), "{endpoint}: {e}");
/// }
///
/// // Only the browsers' push services.
/// let policy = EndpointPolicy::new().allow_hosts([
///     "fcm.googleapis.com",
///     "updates.push.services.mozilla.com",
///     "web.push.apple.com",
///     "*.notify.windows.com",
/// ]);
/// assert!(Subscription::new_with_policy("https://wns2-par02p.notify.windows.com/w/?token=x", P256DH, AUTH, &policy).is_ok());
/// assert!(Subscription::new_with_policy("https://push.example.net/x", P256DH, AUTH, &policy).is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    /// `None`: any host that passes the other checks.
    allowed_hosts: Option<Vec<HostPattern>>,
    insecure_for_testing: bool,
}

impl EndpointPolicy {
    /// The default policy: `https:` endpoints whose host is a public-looking
    /// name, any such host.
    ///
    /// ```
    /// use htmx_sse::webpush::{EndpointPolicy, Subscription};
    ///
    /// let policy = EndpointPolicy::new();
    /// let sub = Subscription::new_with_policy(
    ///     "https://push.example.net/send/abc",
    ///     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    ///     "BTBZMqHH6r4Tts7J_aSIgg",
    ///     &policy,
    /// )?;
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub const fn new() -> Self {
        Self {
            allowed_hosts: None,
            insecure_for_testing: false,
        }
    }

    /// Accepts only endpoints on these hosts: an exact name
    /// (`fcm.googleapis.com`), or `*.` and a domain for any name below it
    /// (`*.notify.windows.com` matches `wns2-par02p.notify.windows.com`, not
    /// `notify.windows.com` itself). Names are compared without case and
    /// without a trailing dot; give internationalised names in their
    /// `xn--` form. An IP address (`127.0.0.1`, `::1`) matches only that
    /// address, and only where IP literals are allowed at all
    /// ([`allow_insecure_endpoints_for_testing`](Self::allow_insecure_endpoints_for_testing)).
    ///
    /// Calling it again adds to the list. An empty list accepts no endpoint.
    /// The other checks still apply to the hosts listed.
    ///
    /// # Panics
    ///
    /// If a pattern is empty, has a `*` anywhere but a leading `*.`, an empty
    /// label (`a..b`), or a character other than ASCII letters, digits, `-`,
    /// `_` and `.` (or is not an IP address where it looks like one). The
    /// list is the application's configuration, not user data.
    ///
    /// ```
    /// use htmx_sse::webpush::{EndpointPolicy, Error, Subscription};
    ///
    /// let policy = EndpointPolicy::new().allow_hosts(["fcm.googleapis.com", "*.push.services.mozilla.com"]);
    /// let sub = |endpoint: &str| Subscription::new_with_policy(
    ///     endpoint,
    ///     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    ///     "BTBZMqHH6r4Tts7J_aSIgg",
    ///     &policy,
    /// );
    /// assert!(sub("https://FCM.googleapis.com./fcm/send/x").is_ok());
    /// assert!(sub("https://updates.push.services.mozilla.com/wpush/v2/x").is_ok());
    /// assert!(matches!(sub("https://push.services.mozilla.com/x"), Err(Error::EndpointRefused { .. })));
    /// assert!(matches!(sub("https://fcm.googleapis.com.evil.example/x"), Err(Error::EndpointRefused { .. })));
    /// ```
    #[must_use]
    #[track_caller]
    pub fn allow_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = self.allowed_hosts.get_or_insert_with(Vec::new);
        for host in hosts {
            let host = host.as_ref();
            match HostPattern::parse(host) {
                Ok(pattern) => list.push(pattern),
                Err(reason) => panic!(
                    "EndpointPolicy::allow_hosts: invalid host pattern {:?}: {reason}",
                    cut(host)
                ),
            }
        }
        self
    }

    /// Also accepts `http:` endpoints, IP-literal hosts (loopback and private
    /// addresses included) and `localhost` or single-label names: what a
    /// test push service on this machine needs (`http://127.0.0.1:PORT/…`).
    ///
    /// Never call it in production: it lets whoever posts a subscription make
    /// the server `POST` to `http://10.0.0.5/…` or
    /// `http://169.254.169.254/…`. An allow-list
    /// ([`allow_hosts`](Self::allow_hosts)) still applies.
    ///
    /// The dispatcher's own HTTP client still never connects to a non-public
    /// address it got from DNS, even with this policy: a test push service is
    /// reached by IP literal (`127.0.0.1`, not `localhost`), or through a
    /// client of your own ([`Dispatcher::with_client`](super::Dispatcher::with_client)).
    ///
    /// ```
    /// use htmx_sse::webpush::{EndpointPolicy, Subscription};
    ///
    /// let testing = EndpointPolicy::new().allow_insecure_endpoints_for_testing();
    /// let sub = Subscription::new_with_policy(
    ///     "http://127.0.0.1:8080/push/1",
    ///     "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
    ///     "BTBZMqHH6r4Tts7J_aSIgg",
    ///     &testing,
    /// )?;
    /// # Ok::<(), htmx_sse::webpush::Error>(())
    /// ```
    #[must_use]
    pub const fn allow_insecure_endpoints_for_testing(mut self) -> Self {
        self.insecure_for_testing = true;
        self
    }

    /// Checks an endpoint URL (scheme already known to be `http` or `https`).
    pub(crate) fn check(&self, url: &Url) -> Result<(), Error> {
        if url.scheme() != "https" && !self.insecure_for_testing {
            return Err(Error::endpoint_refused(format!(
                "expected https:, got {}: (only EndpointPolicy::allow_insecure_endpoints_for_testing allows it)",
                cut(url.scheme())
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::endpoint_refused(
                "the URL carries a user name or password",
            ));
        }
        let host = HostRef::of(url)?;
        if !self.insecure_for_testing {
            match host {
                HostRef::Ip(ip) => {
                    return Err(Error::endpoint_refused(format!(
                        "the host {ip} is an IP address; push services are reached by name"
                    )));
                }
                HostRef::Name(name) if is_localhost(name) => {
                    return Err(Error::endpoint_refused(format!(
                        "the host {:?} names this machine",
                        cut(name)
                    )));
                }
                HostRef::Name(name) if !name.contains('.') => {
                    return Err(Error::endpoint_refused(format!(
                        "the host {:?} is a single-label name; push services have a dotted domain name",
                        cut(name)
                    )));
                }
                HostRef::Name(_) => {}
            }
        }
        if let Some(allowed) = &self.allowed_hosts
            && !allowed.iter().any(|pattern| pattern.matches(host))
        {
            let shown = match host {
                HostRef::Ip(ip) => ip.to_string(),
                HostRef::Name(name) => cut(name),
            };
            return Err(Error::endpoint_refused(format!(
                "the host {shown:?} is not an allowed push service"
            )));
        }
        Ok(())
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.as_bytes();
    let tail = b"localhost";
    name.len() >= tail.len()
        && name[name.len() - tail.len()..].eq_ignore_ascii_case(tail)
        && (name.len() == tail.len() || name[name.len() - tail.len() - 1] == b'.')
}

/// A URL's host, the trailing dot of a name removed.
#[derive(Clone, Copy)]
enum HostRef<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

impl<'a> HostRef<'a> {
    /// The URL parser has already turned every form of an IPv4 address
    /// (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) into dotted decimal,
    /// and a name cannot end in a number, so a host that reads as an
    /// `Ipv4Addr` is one; an IPv6 host is in brackets.
    fn of(url: &'a Url) -> Result<Self, Error> {
        let host = url.host_str().unwrap_or_default();
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6
                .parse::<Ipv6Addr>()
                .map(|ip| HostRef::Ip(ip.into()))
                .map_err(|_| {
                    Error::subscription("endpoint", format!("bad IPv6 host {:?}", cut(host)))
                });
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(HostRef::Ip(ip.into()));
        }
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty() {
            return Err(Error::subscription("endpoint", "the URL has no host"));
        }
        Ok(HostRef::Name(name))
    }
}

/// One entry of an allow-list.
#[derive(Clone, Debug)]
enum HostPattern {
    Ip(IpAddr),
    Name(String),
    /// `*.example.com`, kept as `.example.com`.
    Below(String),
}

impl HostPattern {
    fn parse(pattern: &str) -> Result<Self, &'static str> {
        let trimmed = pattern.trim();
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|p| p.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(HostPattern::Ip(ip));
        }
        let lower = trimmed.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (below, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        if name.is_empty() {
            return Err("no host name");
        }
        if name.contains('*') {
            return Err("'*' is only allowed as a leading \"*.\"");
        }
        if name.split('.').any(str::is_empty) {
            return Err("empty label");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("only ASCII letters, digits, '-', '_' and '.' (give IDNs as xn--)");
        }
        if name
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err("not an IP address, and a host name cannot end in a number");
        }
        Ok(if below {
            HostPattern::Below(format!(".{name}"))
        } else {
            HostPattern::Name(name.to_owned())
        })
    }

    fn matches(&self, host: HostRef<'_>) -> bool {
        match (self, host) {
            (HostPattern::Ip(allowed), HostRef::Ip(ip)) => *allowed == ip,
            (HostPattern::Name(allowed), HostRef::Name(name)) => allowed.eq_ignore_ascii_case(name),
            (HostPattern::Below(suffix), HostRef::Name(name)) => {
                name.len() > suffix.len()
                    && name.is_char_boundary(name.len() - suffix.len())
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// The address filter.
// ---------------------------------------------------------------------------

/// Whether `ip` is a public unicast address: one a push service can have.
///
/// Refused: unspecified, loopback, private (RFC 1918, `fc00::/7`), link-local
/// (`169.254/16`, `fe80::/10`), shared/CGNAT (`100.64/10`), multicast,
/// broadcast and the reserved `240/4`, `0/8`, the IETF and documentation
/// ranges, benchmarking (`198.18/15`), the 6to4 relay anycast, and in IPv6
/// everything outside `2000::/3` global unicast plus `2001::/23`,
/// `2001:db8::/32`, `2002::/16` (6to4) and `3fff::/20`. IPv4-mapped
/// (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) addresses are judged by
/// the IPv4 address inside; the local-use NAT64 prefix `64:ff9b:1::/48` and
/// the deprecated IPv4-compatible `::a.b.c.d` are refused.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let a = u32::from(ip);
    // (network, prefix length)
    const REFUSED: [(u32, u32); 15] = [
        (0x0000_0000, 8),  // 0.0.0.0/8 "this network", unspecified
        (0x0a00_0000, 8),  // 10.0.0.0/8 private
        (0x6440_0000, 10), // 100.64.0.0/10 shared address space (CGNAT)
        (0x7f00_0000, 8),  // 127.0.0.0/8 loopback
        (0xa9fe_0000, 16), // 169.254.0.0/16 link-local (cloud metadata)
        (0xac10_0000, 12), // 172.16.0.0/12 private
        (0xc000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
        (0xc000_0200, 24), // 192.0.2.0/24 TEST-NET-1
        (0xc058_6300, 24), // 192.88.99.0/24 6to4 relay anycast
        (0xc0a8_0000, 16), // 192.168.0.0/16 private
        (0xc612_0000, 15), // 198.18.0.0/15 benchmarking
        (0xc633_6400, 24), // 198.51.100.0/24 TEST-NET-2
        (0xcb00_7100, 24), // 203.0.113.0/24 TEST-NET-3
        (0xe000_0000, 4),  // 224.0.0.0/4 multicast
        (0xf000_0000, 4),  // 240.0.0.0/4 reserved, 255.255.255.255 broadcast
    ];
    !REFUSED
        .iter()
        .any(|&(net, len)| a >> (32 - len) == net >> (32 - len))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let a = u128::from(ip);
    let in_net = |net: u128, len: u32| a >> (128 - len) == net >> (128 - len);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if in_net(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        // NAT64 well-known prefix: the IPv4 address is in the last 32 bits.
        return is_public_v4(Ipv4Addr::from((a & 0xffff_ffff) as u32));
    }
    // Only global unicast, 2000::/3, and not its special ranges.
    in_net(0x2000 << 112, 3)
        && !in_net(0x2001 << 112, 23) // IETF protocol assignments, Teredo
        && !in_net(0x2001_0db8 << 96, 32) // documentation
        && !in_net(0x2002 << 112, 16) // 6to4
        && !in_net(0x3fff << 112, 20) // documentation
}

/// The host name of a connection that was refused: it resolved only to
/// addresses [`is_public`] refuses. The addresses are not kept: they are the
/// answer to a name the subscriber chose, and an error that travels back to
/// them must not tell them what is inside the network.
#[derive(Debug)]
pub(crate) struct NoPublicAddress {
    host: String,
}

impl fmt::Display for NoPublicAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the host {:?} resolves to no public address", self.host)
    }
}

impl std::error::Error for NoPublicAddress {}

/// A reqwest DNS resolver that passes on only the public addresses of
/// `inner`'s answer, and fails with [`NoPublicAddress`] when none is left.
///
/// reqwest connects only to the addresses its resolver returns, so what
/// this lets through is what the connection is made to. (An IP-literal host
/// is not resolved at all: [`EndpointPolicy`] refuses those by default.)
pub(crate) struct PublicAddressesOnly<R> {
    inner: R,
}

impl<R> PublicAddressesOnly<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner }
    }
}

impl<R: Resolve> Resolve for PublicAddressesOnly<R> {
    fn resolve(&self, name: Name) -> Resolving {
        let host = cut(name.as_str());
        Box::pin(keep_public(self.inner.resolve(name), host))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn keep_public(resolving: Resolving, host: String) -> Result<Addrs, BoxError> {
    let public: Vec<SocketAddr> = resolving.await?.filter(|a| is_public(a.ip())).collect();
    if public.is_empty() {
        tracing::warn!(
            host = %host,
            "web push: refused a push endpoint whose host resolves to no public address"
        );
        return Err(Box::new(NoPublicAddress { host }));
    }
    Ok(Box::new(public.into_iter()))
}

/// The operating system's resolver (`getaddrinfo`), on tokio's blocking
/// pool: what reqwest uses by default, which it does not export.
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(system_resolve(name.as_str().to_owned()))
    }
}

async fn system_resolve(host: String) -> Result<Addrs, BoxError> {
    let addrs = tokio::task::spawn_blocking(move || (host.as_str(), 0).to_socket_addrs()).await??;
    Ok(Box::new(addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::8.8.8.8",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "3fff::1",
            "4000::1",
        ] {
            assert!(!v4(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "169.255.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.167.255.255",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "142.250.74.110",
            "::ffff:142.250.74.110",
            "64:ff9b::8.8.8.8",
            "2001:4860:4860::8888",
            "2a00:1450:4001::200e",
            "2600::1",
            "3ffe::1",
        ] {
            assert!(v4(ip), "{ip} must pass");
        }
    }

    /// A resolver answering every name with fixed addresses.
    struct Fixed(Vec<SocketAddr>);

    impl Resolve for Fixed {
        fn resolve(&self, _: Name) -> Resolving {
            let addrs = self.0.clone();
            Box::pin(async move { Ok(Box::new(addrs.into_iter()) as Addrs) })
        }
    }

    fn name(s: &str) -> Name {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn the_filter_keeps_only_public_addresses() {
        let addrs: Vec<SocketAddr> = ["127.0.0.1:0", "8.8.8.8:0", "[fd00::1]:0", "[2600::1]:0"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let resolver = PublicAddressesOnly::new(Fixed(addrs));
        let got: Vec<SocketAddr> = resolver
            .resolve(name("push.example.net"))
            .await
            .unwrap()
            .collect();
        assert_eq!(
            got,
            ["8.8.8.8:0".parse().unwrap(), "[2600::1]:0".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn the_filter_refuses_a_name_with_only_internal_addresses() {
        let addrs = vec![
            "10.0.0.5:0".parse().unwrap(),
            "[::ffff:127.0.0.1]:0".parse().unwrap(),
        ];
        let resolver = PublicAddressesOnly::new(Fixed(addrs));
        let Err(e) = resolver.resolve(name("rebind.example.net")).await else {
            panic!("internal addresses passed the filter");
        };
        assert_eq!(
            e.to_string(),
            "the host \"rebind.example.net\" resolves to no public address"
        );
        assert!(e.downcast_ref::<NoPublicAddress>().is_some());
    }

    #[tokio::test]
    async fn localhost_through_the_system_resolver_is_refused() {
        let resolver = PublicAddressesOnly::new(SystemResolver);
        let Err(e) = resolver.resolve(name("localhost")).await else {
            panic!("localhost passed the filter");
        };
        assert!(e.downcast_ref::<NoPublicAddress>().is_some(), "{e}");
    }

    #[test]
    fn localhost_names() {
        for name in ["localhost", "LOCALHOST", "a.localhost", "x.y.LocalHost"] {
            assert!(is_localhost(name), "{name}");
        }
        for name in [
            "notlocalhost",
            "localhost.example.net",
            "localhosts",
            "ocalhost",
        ] {
            assert!(!is_localhost(name), "{name}");
        }
    }

    #[test]
    fn host_patterns() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        let n = HostRef::Name;
        assert!(p("FCM.googleapis.com.").matches(n("fcm.googleapis.com")));
        assert!(!p("fcm.googleapis.com").matches(n("xfcm.googleapis.com")));
        assert!(p("*.notify.windows.com").matches(n("wns2-par02p.notify.windows.com")));
        assert!(p("*.notify.windows.com").matches(n("a.b.notify.windows.com")));
        assert!(!p("*.notify.windows.com").matches(n("notify.windows.com")));
        assert!(!p("*.notify.windows.com").matches(n("evilnotify.windows.com")));
        assert!(!p("*.notify.windows.com").matches(n("notify.windows.com.evil.example")));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p("127.0.0.1").matches(HostRef::Ip(ip)));
        assert!(!p("127.0.0.1").matches(n("127.0.0.1.example")));
        assert!(p("[::1]").matches(HostRef::Ip("::1".parse().unwrap())));
        for bad in [
            "",
            "*",
            "*.",
            "a.*.b",
            "a..b",
            "push example",
            "bücher.example",
            "1.2.3.999",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    #[should_panic(expected = "EndpointPolicy::allow_hosts: invalid host pattern \"a.*.b\"")]
    fn a_bad_pattern_is_a_programmer_error() {
        let _ = EndpointPolicy::new().allow_hosts(["fcm.googleapis.com", "a.*.b"]);
    }
}
