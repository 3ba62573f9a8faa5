//! Who is on the other end of a connection: the client's address, behind
//! trusted proxies.
//!
//! Behind a load balancer every connection comes from the balancer. A
//! forwarded address (`X-Forwarded-For`, or `Forwarded: for=`) is believed
//! only when the connection comes from a trusted proxy; then the client is
//! the rightmost address in the chain that is not itself a trusted proxy
//! (the leftmost entries are whatever the client chose to send). Every
//! per-address limit uses the address found this way.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// Parses a comma-separated list of addresses and blocks.
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Cidr::from_str)
        .collect()
}

fn trusted(proxies: &[Cidr], ip: IpAddr) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// The addresses a request was forwarded for, nearest last.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut chain = Vec::new();
    // RFC 7239 `Forwarded: for=192.0.2.1, for="[2001:db8::1]:4711"`.
    for value in headers.get_all("forwarded") {
        let Ok(v) = value.to_str() else { continue };
        for element in v.split(',') {
            for pair in element.split(';') {
                let Some((k, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for") {
                    if let Some(ip) = parse_node(v.trim().trim_matches('"')) {
                        chain.push(ip);
                    }
                }
            }
        }
    }
    if chain.is_empty() {
        for value in headers.get_all("x-forwarded-for") {
            let Ok(v) = value.to_str() else { continue };
            chain.extend(v.split(',').filter_map(|p| parse_node(p.trim())));
        }
    }
    chain
}

/// `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

/// The client's address for a connection from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    if !trusted(proxies, peer) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    chain
        .iter()
        .rev()
        .copied()
        .find(|ip| !trusted(proxies, *ip))
        .or(chain.first().copied())
        .unwrap_or(peer)
}

/// One key per client for per-address limits: an IPv4 address, or an IPv6
/// /64 (one subscriber's network: a client rotating addresses inside its
/// /64 is still one client).
pub fn address_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            None => ((u128::from(v6) >> 64) as u64) | (1 << 62),
        },
    }
}

/// The caller's address (see the module's doc), for per-address limits.
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<crate::AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<crate::listener::Peer>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.addr.ip());
        Ok(ClientAddr(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies = parse_list("10.0.0.0/8, ::1").unwrap();
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.9.9.9")]);
        // From the balancer: the rightmost untrusted hop.
        assert_eq!(
            client_ip(lb, &xff, &proxies),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // From anyone else the header is a lie, ignored.
        assert_eq!(client_ip(stranger, &xff, &proxies), stranger);
        // RFC 7239 wins over X-Forwarded-For; ports and brackets are fine.
        let fwd = headers(&[
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        assert_eq!(
            client_ip(lb, &fwd, &proxies),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &proxies), lb);
        assert!(parse_list("10.0.0.0/33").is_err());
        assert!(parse_list("banana").is_err());
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key(v4), address_key(mapped));
    }
}
