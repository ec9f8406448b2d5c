//! Clients behind a reverse proxy: every connection then comes from the proxy, so the client's
//! own address is read from `X-Forwarded-For`, but only when the peer is a proxy named in
//! `trusted_proxies` (anyone else could write any address there).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// One entry of `trusted_proxies`: an address (`10.0.0.5`, `::1`) or a CIDR range
/// (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: IpAddr,
    prefix_len: u8,
}

/// An address as bits, with its family's width: IPv4 in the low 32 bits.
fn bits(address: IpAddr) -> (u128, u8) {
    match address.to_canonical() {
        IpAddr::V4(v4) => (u128::from(v4.to_bits()), 32),
        IpAddr::V6(v6) => (v6.to_bits(), 128),
    }
}

/// The mask of the first `prefix_len` of `width` bits.
fn prefix_mask(prefix_len: u8, width: u8) -> u128 {
    let all = u128::MAX >> (128 - u32::from(width));
    all & !(all.checked_shr(u32::from(prefix_len)).unwrap_or(0))
}

impl AddressRange {
    /// Whether `address` is in the range (an IPv4-mapped IPv6 address counts as its IPv4
    /// address).
    pub fn contains(&self, address: IpAddr) -> bool {
        let (network, width) = bits(self.network);
        let (address, address_width) = bits(address);
        let mask = prefix_mask(self.prefix_len, width);
        width == address_width && network & mask == address & mask
    }
}

impl FromStr for AddressRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = IpAddr::from_str(address)
            .map_err(|_| {
                format!("{text:?}: expected an IP address or a CIDR range such as 10.0.0.0/8")
            })?
            .to_canonical();
        let (network_bits, width) = bits(network);
        let prefix_len = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {width}"))?,
        };
        // Host bits set (10.0.0.1/8) most likely mean a typo: say which range was meant.
        if network_bits & !prefix_mask(prefix_len, width) != 0 {
            return Err(format!(
                "{text:?} has bits set after the first {prefix_len}; write the range's first \
                 address, or the single address without /{prefix_len}"
            ));
        }
        Ok(AddressRange {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix_len == bits(self.network).1 {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix_len)
        }
    }
}

impl serde::Serialize for AddressRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AddressRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` hop that is not a trusted proxy (each proxy appends the address it was
/// reached from, so every hop left of an untrusted one may be forged). A hop that is not an
/// address ends the walk at the proxy that passed it on.
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[AddressRange],
) -> Option<IpAddr> {
    let mut client = peer?.to_canonical();
    let is_trusted = |address: IpAddr| trusted_proxies.iter().any(|r| r.contains(address));
    if !is_trusted(client) {
        return Some(client);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        if !is_trusted(client) {
            break;
        }
        let parsed = IpAddr::from_str(hop)
            .ok()
            .or_else(|| SocketAddr::from_str(hop).ok().map(|s| s.ip()));
        match parsed {
            Some(address) => client = address.to_canonical(),
            None => break,
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ranges(list: &[&str]) -> Vec<AddressRange> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn ranges_parse_print_and_match() {
        let r: AddressRange = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains("10.255.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        assert!(!r.contains("::1".parse().unwrap()));
        assert_eq!(r.to_string(), "10.0.0.0/8");
        let one: AddressRange = "::1".parse().unwrap();
        assert_eq!(one.to_string(), "::1");
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let everything: AddressRange = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("192.0.2.1".parse().unwrap()));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "proxy.example",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<AddressRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let peer = Some("127.0.0.1".parse().unwrap());
        let header = forwarded(&["203.0.113.7"]);
        assert_eq!(client_address(peer, &header, &[]), peer);
        assert_eq!(
            client_address(peer, &header, &ranges(&["127.0.0.1"])),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(client_address(None, &header, &ranges(&["127.0.0.1"])), None);
        assert_eq!(
            client_address(peer, &HeaderMap::new(), &ranges(&["127.0.0.1"])),
            peer
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let peer = Some("10.0.0.2".parse().unwrap());
        let trusted = ranges(&["10.0.0.0/8"]);
        // The client forged 198.51.100.9; the outer proxy (10.0.0.3) appended its real
        // address, the inner one the outer's.
        let header = forwarded(&["198.51.100.9, 203.0.113.7", "10.0.0.3"]);
        assert_eq!(
            client_address(peer, &header, &trusted),
            Some("203.0.113.7".parse().unwrap())
        );
        // A hop that is not an address: the proxy that passed it on is the client.
        let header = forwarded(&["203.0.113.7, garbage, 10.0.0.3"]);
        assert_eq!(
            client_address(peer, &header, &trusted),
            Some("10.0.0.3".parse().unwrap())
        );
        // A hop with a port.
        let header = forwarded(&["[2001:db8::1]:4711"]);
        assert_eq!(
            client_address(peer, &header, &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
    }
}
