//! Runs [`Step`]s, and runs code inside a lab namespace.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::script::Step;

/// A step failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started (not installed?).
    #[error("cannot run {program}: {source} (is iproute2/iptables installed?)")]
    Spawn {
        /// Program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// Entering a namespace or writing a sysctl failed.
    #[error("in namespace {ns}: {what}: {source}")]
    Netns {
        /// Namespace.
        ns: String,
        /// What was being done.
        what: String,
        /// Why.
        source: io::Error,
    },
}

/// Runs one step.
pub fn run(step: &Step) -> Result<(), ExecError> {
    match step {
        Step::Sysctl { ns, key, value } => {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            in_netns(ns, || std::fs::write(&path, value))
                .and_then(|r| r)
                .map_err(|source| ExecError::Netns {
                    ns: ns.clone(),
                    what: format!("write {key}={value}"),
                    source,
                })
        }
        Step::Run {
            ns,
            program,
            args,
            stdin,
        } => {
            let mut cmd = match (ns, *program) {
                (Some(ns), "ip" | "bridge") => {
                    let mut c = Command::new(program);
                    c.arg("-n").arg(ns);
                    c
                }
                (Some(ns), _) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, program]);
                    c
                }
                (None, _) => Command::new(program),
            };
            cmd.args(args);
            let line = format!("{cmd:?}").replace('"', "");
            cmd.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
                program: program.to_string(),
                source,
            })?;
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A write error surfaces as the program's own failure below.
                let _ = pipe.write_all(input.as_bytes());
            }
            let out = child
                .wait_with_output()
                .map_err(|source| ExecError::Spawn {
                    program: program.to_string(),
                    source,
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(ExecError::Failed {
                    command: line,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                })
            }
        }
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns` (sockets it
/// opens live there). The calling thread is untouched.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread inside the namespace panicked")))
    })
}

/// A minimal HTTP/1.0 GET from inside `ns` (for readiness checks, no runtime needed).
/// Returns the status and the body.
pub fn http_get(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    in_netns(ns, || -> io::Result<(u16, String)> {
        let s = connect(addr, timeout)?;
        get_over(s, addr, path, None)
    })?
}

/// [`http_get`] over TLS, verified with `tls` (the lab's CA).
pub fn https_get(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    bearer: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    in_netns(ns, || -> io::Result<(u16, String)> {
        let s = connect(addr, timeout)?;
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(std::sync::Arc::clone(tls), name)
            .map_err(io::Error::other)?;
        get_over(rustls::StreamOwned::new(conn, s), addr, path, bearer)
    })?
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn get_over(
    mut s: impl Read + Write,
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> io::Result<(u16, String)> {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    s.flush()?;
    let mut resp = Vec::new();
    match s.take(1 << 20).read_to_end(&mut resp) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: what arrived is the answer.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other("malformed HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Forwards TCP connections accepted on `local` (a loopback address in this namespace)
/// to `target` inside namespace `ns`, as `kubectl port-forward` does for a pod: the root
/// namespace gets no route to the lab, only a socket on loopback. Runs until `listener`
/// fails; one pair of copying threads per connection.
pub fn forward(listener: std::net::TcpListener, ns: &str, target: SocketAddr) -> io::Result<()> {
    for conn in listener.incoming() {
        let client = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "forward: accept failed");
                continue;
            }
        };
        // The socket is made inside the namespace; it works from any thread afterwards.
        let upstream = match in_netns(ns, || {
            TcpStream::connect_timeout(&target, Duration::from_secs(5))
        }) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, %target, "forward: cannot reach the target");
                continue;
            }
        };
        let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || pipe(client, upstream));
        std::thread::spawn(move || pipe(u2, c2));
    }
    Ok(())
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}
