//! Newtypes for the identities that cross module and process boundaries.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A Kubernetes node name (an RFC 1123 subdomain, at most 253 characters).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Validates `name` as an RFC 1123 subdomain.
    pub fn new(name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if ok {
            Ok(Self(name))
        } else {
            Err(format!(
                "{name:?} is not a valid node name (lower-case letters, digits, '-' and '.', at most 253 characters)"
            ))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodeName> for String {
    fn from(value: NodeName) -> Self {
        value.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A node's pod CIDR (IPv4), always in canonical network form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodCidr(Ipv4Net);

impl PodCidr {
    /// Parses `10.42.1.0/24`; host bits must be zero and the prefix at most /30.
    pub fn parse(s: &str) -> Result<Self, String> {
        let net: Ipv4Net = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR such as 10.42.1.0/24"))?;
        if net.network() != net.addr() {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        if net.prefix_len() > 30 {
            return Err(format!(
                "{s:?} is too small for a pod network (at most /30)"
            ));
        }
        Ok(Self(net))
    }

    /// Wraps a network (for aggregates of pod CIDRs, which may be larger than /30 allows
    /// for a node but are always in canonical form).
    pub fn from_net(net: Ipv4Net) -> Self {
        Self(net.trunc())
    }

    /// The underlying network.
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// The first usable address, which flannel gives to `cni0` (the pod gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + 1)
    }

    /// The network address, which flannel gives to `flannel.1` (the VTEP address).
    pub fn network(&self) -> Ipv4Addr {
        self.0.network()
    }

    /// Whether `ip` lies inside this CIDR.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }

    /// Whether the two CIDRs share any address.
    pub fn overlaps(&self, other: &PodCidr) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }
}

impl TryFrom<String> for PodCidr {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PodCidr> for String {
    fn from(value: PodCidr) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for PodCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which vantage point an agent probes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// The node's host-network agent: underlay, node-local evidence, capture.
    Host,
    /// The pod-network agent: what an ordinary pod on the node sees.
    Pod,
}

impl AgentKind {
    /// Both kinds, host first.
    pub const ALL: [AgentKind; 2] = [AgentKind::Host, AgentKind::Pod];

    /// `host` or `pod`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Host => "host",
            AgentKind::Pod => "pod",
        }
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(AgentKind::Host),
            "pod" => Ok(AgentKind::Pod),
            other => Err(format!(
                "unknown agent kind {other:?} (expected host or pod)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_rfc1123() {
        assert!(NodeName::new("n1").is_ok());
        assert!(NodeName::new("ip-10-0-0-1.ec2.internal").is_ok());
        for bad in ["", "N1", "-a", "a-", "a..b", "a_b"] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn pod_cidr_gateway_is_first_address() {
        let c = PodCidr::parse("10.42.3.0/24").expect("valid");
        assert_eq!(c.first_host(), Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(c.network(), Ipv4Addr::new(10, 42, 3, 0));
        assert!(
            PodCidr::parse("10.42.3.1/24")
                .expect_err("host bits")
                .contains("10.42.3.0/24")
        );
        assert!(PodCidr::parse("10.42.3.0/31").is_err());
        let other = PodCidr::parse("10.42.0.0/16").expect("valid");
        assert!(c.overlaps(&other) && other.overlaps(&c));
        assert!(!c.overlaps(&PodCidr::parse("10.42.4.0/24").expect("valid")));
    }
}
