//! `meshprobe demo`: the whole story on one machine in about half a minute.

use std::process::Command;
use std::time::Instant;

use meshprobe_sandbox::Fault;
use meshprobe_sandbox::lab::{Lab, LabSpec, default_state_root};

/// A step's heading: bold on a terminal, plain in a pipe or with NO_COLOR set.
fn say(s: &str) {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        println!("\n\x1b[1m==> {s}\x1b[0m");
    } else {
        println!("\n==> {s}");
    }
}

fn check(lab: &Lab, exe: &std::path::Path) -> Result<u8, String> {
    let ctl = lab.plan().ctl_ns();
    println!(
        "$ {} lab exec --name {} ctl -- meshprobe check   # https, as operator `lab`",
        crate::lab_cmd::invocation(),
        lab.name()
    );
    let status = Command::new("ip")
        .args(["netns", "exec", &ctl])
        .arg(exe)
        .args(["check", "--timeout", "20s"])
        .envs(lab.client_env())
        .status()
        .map_err(|e| format!("cannot run check: {e}"))?;
    Ok(status.code().unwrap_or(2) as u8)
}

/// Where `demo --keep` serves the web view.
pub const VIEW_ADDR: &str = "127.0.0.1:7070";

/// Runs the demo; returns the exit code (0 when both checks said what they should). With
/// `keep`, the lab and the web view stay up until Ctrl-C.
pub fn run(nodes: usize, keep: bool) -> u8 {
    match run_inner(nodes, keep) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshprobe demo: error: {}", crate::cli::error_line(e));
            2
        }
    }
}

fn run_inner(nodes: usize, keep: bool) -> Result<u8, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the meshprobe binary: {e}"))?;
    let spec = LabSpec::new(nodes, exe.clone());
    let name = spec.name.clone();
    // Ctrl-C: remove the lab by name (its processes by PID), then leave.
    {
        let name = name.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                eprintln!("\ninterrupted: removing lab {name}");
                if let Ok(mut lab) = Lab::open(&name, &default_state_root()) {
                    let _ = lab.down();
                }
                std::process::exit(130);
            }
        });
    }

    say(&format!(
        "Building a {nodes}-node flannel-style cluster from network namespaces (lab {name})"
    ));
    let t = Instant::now();
    let mut lab = Lab::up(spec).map_err(|e| e.to_string())?;
    println!(
        "underlay switch, {nodes} nodes with cni0 + flannel.1 (VXLAN 8472), kube-proxy rules, CoreDNS x2, web pods, NodePort {}, ingress on {}: {:.1} s",
        meshprobe_sandbox::addr::NODE_PORT,
        lab.plan().ingress().name,
        t.elapsed().as_secs_f64()
    );
    say("Starting the coordinator and a host + pod agent on every node");
    let t = Instant::now();
    lab.start_mesh().map_err(|e| e.to_string())?;
    println!(
        "{} agents reporting after {:.1} s",
        nodes * 2,
        t.elapsed().as_secs_f64()
    );

    say("A healthy cluster");
    let healthy = check(&lab, &exe)?;

    let victim = if nodes >= 2 { "n2" } else { "n1" };
    let fault = Fault::IpForwardOff {
        node: victim.to_owned(),
    };
    say(&format!(
        "Breaking it the way a reboot does: net.ipv4.ip_forward=0 on {victim}"
    ));
    lab.inject(fault.clone()).map_err(|e| e.to_string())?;
    let broken = check(&lab, &exe)?;
    if keep {
        let listener = std::net::TcpListener::bind(VIEW_ADDR)
            .map_err(|e| format!("cannot serve the web view on {VIEW_ADDR}: {e}"))?;
        say(&format!(
            "The live view: https://{VIEW_ADDR}/ (Ctrl-C removes the lab)"
        ));
        println!(
            "The lab's CA is {} (import it, or accept the warning). {victim} is still broken; in another terminal:",
            lab.creds_file(meshprobe_sandbox::creds::CA).display()
        );
        let me = crate::lab_cmd::invocation();
        println!("  {me} lab heal --name {name}          # watch it turn green");
        println!("  {me} lab fault --name {name} vxlan-drop-in --node n3");
        println!("  {me} lab exec --name {name} ctl -- meshprobe check");
        let (ns, target) = lab.coordinator_target();
        lab.keep();
        // The Ctrl-C thread removes the lab by name and exits.
        return meshprobe_sandbox::exec::forward(listener, &ns, target)
            .map(|()| 0)
            .map_err(|e| format!("web view: {e}"));
    }
    lab.heal(&fault).map_err(|e| e.to_string())?;

    say("Cleaning up");
    lab.down().map_err(|e| e.to_string())?;
    println!("lab {name} removed: namespaces deleted, processes stopped");

    let me = crate::lab_cmd::invocation();
    say("What to try next");
    println!(
        "  {me} demo --keep                           # the same, then the live view at https://{VIEW_ADDR}/"
    );
    println!("  {me} lab up --nodes 6                      # a lab that stays up");
    println!(
        "  {me} lab fault vxlan-drop-in --node n3     # or: forward-reject, underlay-mtu, fdb-missing --peer n1, link-down, loss ..."
    );
    println!(
        "  {me} lab exec ctl -- meshprobe check --output json   # lab exec passes the coordinator's URL, CA and an operator credential"
    );
    println!("  {me} lab heal; {me} lab down");
    let ok = healthy == 0 && broken == 1;
    if !ok {
        println!(
            "\nunexpected: the healthy check exited {healthy} (want 0), the broken one {broken} (want 1)"
        );
    }
    Ok(if ok { 0 } else { 1 })
}
