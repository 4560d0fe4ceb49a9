//! Why a probe failed, as a type: the diagnosis reads [`FailKind`] and never the words of
//! a cell's `detail`, which are for people.
//!
//! The kinds are what the kernel or the peer told the prober (a reset, an ICMP error, a
//! local `EPERM`, `EMSGSIZE`) or what it saw (silence, a DNS rcode, an HTTP status).
//! They travel in reports and cells as kebab-case ids (`docs/contract-additions.md`). A
//! kind this build does not know (a newer agent's) reads as [`FailKind::Unrecognised`];
//! its `detail` still says what happened.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// What a failed probe met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailKind {
    /// No answer within the probe's timeout: the packet or its answer was lost silently.
    Timeout,
    /// The target's node answered that nothing listens (a TCP reset, ICMP port
    /// unreachable): the path works, the service does not.
    Refused,
    /// ICMP "administratively prohibited": a REJECT rule on the path answered.
    Prohibited,
    /// ICMP net or host unreachable, or no route: a router or the sender has no way on.
    Unreachable,
    /// The packet is larger than the path carries: `EMSGSIZE` at the sender (a learned
    /// path MTU) or ICMP "fragmentation needed".
    TooBig,
    /// The sender's own firewall refused the packet (`EPERM` on send).
    LocalRefusal,
    /// ICMP time exceeded: a routing loop.
    TimeExceeded,
    /// DNS answered with an error rcode (SERVFAIL, NXDOMAIN, REFUSED, ...).
    DnsRcode,
    /// DNS answered NOERROR without the record asked for.
    DnsNoAnswer,
    /// HTTP answered with a status that is not a success (and not an upstream error).
    HttpStatus,
    /// HTTP 502, 503 or 504: a proxy (an ingress controller) answered that the backend
    /// behind it failed.
    UpstreamError,
    /// HTTP answered, but the body is not what the check expects (too large, not
    /// Prometheus text).
    BadBody,
    /// A transfer that started and then stopped moving.
    Stalled,
    /// The prober could not send at all, for a reason of its own (no socket, bind).
    LocalError,
    /// A kind this build does not know, from a newer agent.
    #[serde(other)]
    Unrecognised,
}

impl FailKind {
    /// Every kind, in a fixed order (its position is its compact code).
    pub const ALL: [FailKind; 15] = [
        FailKind::Timeout,
        FailKind::Refused,
        FailKind::Prohibited,
        FailKind::Unreachable,
        FailKind::TooBig,
        FailKind::LocalRefusal,
        FailKind::TimeExceeded,
        FailKind::DnsRcode,
        FailKind::DnsNoAnswer,
        FailKind::HttpStatus,
        FailKind::UpstreamError,
        FailKind::BadBody,
        FailKind::Stalled,
        FailKind::LocalError,
        FailKind::Unrecognised,
    ];

    /// The contract's id.
    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::Timeout => "timeout",
            FailKind::Refused => "refused",
            FailKind::Prohibited => "prohibited",
            FailKind::Unreachable => "unreachable",
            FailKind::TooBig => "too-big",
            FailKind::LocalRefusal => "local-refusal",
            FailKind::TimeExceeded => "time-exceeded",
            FailKind::DnsRcode => "dns-rcode",
            FailKind::DnsNoAnswer => "dns-no-answer",
            FailKind::HttpStatus => "http-status",
            FailKind::UpstreamError => "upstream-error",
            FailKind::BadBody => "bad-body",
            FailKind::Stalled => "stalled",
            FailKind::LocalError => "local-error",
            FailKind::Unrecognised => "unrecognised",
        }
    }

    /// A one-byte code for compact storage (1 + the position in [`FailKind::ALL`]; 0 is
    /// "none").
    pub fn code(self) -> u8 {
        FailKind::ALL
            .iter()
            .position(|k| *k == self)
            .map_or(0, |p| p as u8 + 1)
    }

    /// The kind of a [`FailKind::code`]; `None` for 0 and codes this build does not have.
    pub fn from_code(code: u8) -> Option<FailKind> {
        code.checked_sub(1)
            .and_then(|i| FailKind::ALL.get(usize::from(i)).copied())
    }

    /// Whether something on the path answered (a reset, an ICMP error, a DNS or HTTP
    /// answer): the packet reached that far, so the hops before it carried it.
    pub fn answered(self) -> bool {
        matches!(
            self,
            FailKind::Refused
                | FailKind::Prohibited
                | FailKind::Unreachable
                | FailKind::TimeExceeded
                | FailKind::DnsRcode
                | FailKind::DnsNoAnswer
                | FailKind::HttpStatus
                | FailKind::UpstreamError
                | FailKind::BadBody
        )
    }

    /// The kind of a socket error, from its errno: what the kernel decided, not what the
    /// message says.
    pub fn of_io(e: &io::Error) -> FailKind {
        match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
                return FailKind::Refused;
            }
            io::ErrorKind::TimedOut => return FailKind::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                return FailKind::Unreachable;
            }
            io::ErrorKind::PermissionDenied => return FailKind::LocalRefusal,
            _ => {}
        }
        match e.raw_os_error() {
            Some(libc_emsgsize) if libc_emsgsize == EMSGSIZE => FailKind::TooBig,
            Some(eperm) if eperm == EPERM => FailKind::LocalRefusal,
            _ => FailKind::LocalError,
        }
    }
}

/// Linux's errno values the kinds are read from (the same on every architecture Linux
/// runs on; the core links no libc).
const EPERM: i32 = 1;
const EMSGSIZE: i32 = 90;

impl fmt::Display for FailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe's failure: its kind, for the diagnosis, and the words, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What it met.
    pub kind: FailKind,
    /// What happened, in words ("timeout", "rcode SERVFAIL", "HTTP 503", ...).
    pub detail: String,
}

impl Failure {
    /// A failure of `kind`, with its words.
    pub fn new(kind: FailKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// A timeout.
    pub fn timeout() -> Self {
        Self::new(FailKind::Timeout, "timeout")
    }

    /// A socket error, its kind read from the errno, with `what` the step that failed.
    pub fn io(what: &str, e: &io::Error) -> Self {
        Self::new(FailKind::of_io(e), format!("{what}: {e}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_zero_is_none() {
        for k in FailKind::ALL {
            assert_eq!(FailKind::from_code(k.code()), Some(k));
        }
        assert_eq!(FailKind::from_code(0), None);
        assert_eq!(FailKind::from_code(200), None);
    }

    #[test]
    fn ids_are_kebab_case_and_unknown_ids_are_kept_readable() {
        for k in FailKind::ALL {
            let json = serde_json::to_string(&k).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        let newer: FailKind = serde_json::from_str("\"quantum-foam\"").unwrap_or(FailKind::Timeout);
        assert_eq!(newer, FailKind::Unrecognised);
    }

    #[test]
    fn socket_errors_are_read_by_errno() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(FailKind::of_io(&refused), FailKind::Refused);
        assert_eq!(
            FailKind::of_io(&io::Error::from_raw_os_error(90)),
            FailKind::TooBig
        );
        assert_eq!(
            FailKind::of_io(&io::Error::from_raw_os_error(1)),
            FailKind::LocalRefusal
        );
        assert_eq!(
            FailKind::of_io(&io::Error::from_raw_os_error(113)),
            FailKind::Unreachable
        );
    }
}
