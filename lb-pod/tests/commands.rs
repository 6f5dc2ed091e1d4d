//! The other commands and the exit codes, run as the real binary. Anything that could touch
//! netfilter runs in a namespace of its own. Needs root and iproute2.

mod support;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
use support::{http_server, Netns, Running, LB};

const NOBODY: u32 = 65534;

/// Makes `command` run as nobody (no supplementary groups, hence no capabilities), in the
/// network namespace `netns` if given. std's `uid` would switch before a `pre_exec` closure
/// could still enter the namespace, so all of it is done here.
fn as_nobody(command: &mut Command, netns: Option<File>) {
    // SAFETY: only system calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some(netns) = &netns {
                setns(netns, CloneFlags::CLONE_NEWNET)?;
            }
            setgroups(&[])?;
            setgid(Gid::from_raw(NOBODY))?;
            setuid(Uid::from_raw(NOBODY))?;
            Ok(())
        });
    }
}

/// A copy of the binary that nobody can run wherever the checkout is: the build directory may
/// sit below a directory only root can enter (such as one made by `mktemp -d`).
struct RunnableByNobody {
    dir: PathBuf,
}

impl RunnableByNobody {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hostlb-lb-{test}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(LB, dir.join("hostlb-lb")).unwrap();
        RunnableByNobody { dir }
    }

    fn command(&self) -> Command {
        Command::new(self.dir.join("hostlb-lb"))
    }
}

impl Drop for RunnableByNobody {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn hold_as_nobody_until(signal: Signal) {
    support::require_root_and_ip();
    let binary = RunnableByNobody::new(&format!("hold-{signal}"));
    let mut command = binary.command();
    command.arg("hold");
    as_nobody(&mut command, None);
    let mut hold = Running::spawn(command);
    hold.wait_for_line("holding until SIGTERM or SIGINT");
    hold.signal(signal);
    let status = hold.wait(Duration::from_secs(5));
    assert!(status.success(), "hold must exit 0 on {signal}, got {status}: {}", hold.log);
}

#[test]
fn hold_exits_0_on_sigterm_as_nobody() {
    hold_as_nobody_until(Signal::SIGTERM);
}

#[test]
fn hold_exits_0_on_sigint_as_nobody() {
    hold_as_nobody_until(Signal::SIGINT);
}

#[test]
fn probe_is_ready_on_200_only() {
    let netns = Netns::lone("probe");
    let (ok, _ok_server) = http_server(&netns, "HTTP/1.1 200 OK");
    let (unavailable, _unavailable_server) = http_server(&netns, "HTTP/1.1 503 Service Unavailable");

    let ready = netns.lb(&["probe", "--port", &ok.to_string(), "--address", "127.0.0.1"]);
    assert_eq!(ready.status.code(), Some(0), "{}", String::from_utf8_lossy(&ready.stderr));

    let not_ready = netns.lb(&["probe", "--port", &unavailable.to_string(), "--address", "127.0.0.1"]);
    let stderr = String::from_utf8_lossy(&not_ready.stderr);
    assert_eq!(not_ready.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answered 503"), "{stderr}");

    // As the pod runs it: both from the environment, the address possibly a list.
    let port = ok.to_string();
    let from_env = netns
        .lb_command(&["probe"], &[("HOSTLB_PROBE_ADDRESS", "127.0.0.1,::1"), ("HOSTLB_PROBE_PORT", &port)])
        .output()
        .unwrap();
    assert_eq!(from_env.status.code(), Some(0), "{}", String::from_utf8_lossy(&from_env.stderr));
}

#[test]
fn probe_fails_with_1_when_nothing_answers() {
    let netns = Netns::lone("probe-closed");
    let (port, server) = http_server(&netns, "HTTP/1.1 200 OK");
    drop(server);
    // The listener is closed with its thread; connecting is refused.
    std::thread::sleep(Duration::from_millis(20));
    let output = netns.lb(&["probe", "--port", &port.to_string(), "--address", "127.0.0.1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connecting"), "{stderr}");
}

#[test]
fn bad_arguments_exit_2_naming_the_argument_and_value() {
    let netns = Netns::lone("bad-args");
    /// Arguments, environment, and what stderr must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["init", "--port", "tcp:80", "--to", "10.0.0.1"],
            &[],
            "'tcp:80' for '--port <PROTO:LISTEN:TARGET>': expected",
        ),
        (&["init", "--port", "http:80:80", "--to", "10.0.0.1"], &[], "'http:80:80' for '--port"),
        (&["init", "--port", "tcp:80:80"], &[], "--to: no destination"),
        (&["run", "--port", "tcp:80:80", "--to", "$(HOSTLB_NODE_ADDRESS)"], &[], "nor node-endpoints"),
        (&["init", "--port", "tcp:80:80", "--to", "node-endpoints,10.0.0.1"], &[], "besides node-endpoints"),
        (&["init", "--port", "tcp:80:80", "--to", "10.0.0.1,10.0.0.2"], &[], "at most one per family"),
        (&["init", "--port", "tcp:80:80", "--to", "10.0.0.1", "--source-range", "10.0.0.0/40"], &[], "0 to 32"),
        (&["init", "--to", "10.0.0.1"], &[("HOSTLB_PORTS", "tcp:80:80,udp:53")], "'udp:53' for '--port"),
        (&["init", "--port", "tcp:80:80", "--to", "10.0.0.1"], &[("HOSTLB_FAMILIES", "ipv6")], "--to: no destination"),
        (&["probe", "--address", "10.0.0.1", "--port", "http"], &[], "'http' for '--port <N>'"),
        (&["probe", "--port", "10256"], &[], "--address"),
        (&["init", "--port", "tcp:80:80", "--to", "10.0.0.1", "--bogus"], &[], "--bogus"),
        (&["frobnicate"], &[], "frobnicate"),
    ];
    for (args, env, expected) in cases {
        let output = netns.lb_command(args, env).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: expected {expected:?} in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(netns.ruleset(), "", "a bad argument changes nothing");
}

#[test]
fn arguments_come_from_the_environment_as_comma_lists() {
    let netns = Netns::lone("env");
    let output = netns
        .lb_command(
            &["init"],
            &[
                ("HOSTLB_PORTS", "tcp:80:8080,udp:53:53"),
                ("HOSTLB_TO", "10.96.0.10,fd00::10"),
                ("HOSTLB_SOURCE_RANGES", "10.0.0.0/8,fd00::/8"),
            ],
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rules = netns.ruleset();
    for expected in [
        "tcp dport 80 dnat to 10.96.0.10:8080",
        "udp dport 53 dnat to [fd00::10]:53",
        "elements = { 10.0.0.0/8 }",
        "elements = { fd00::/8 }",
    ] {
        assert!(rules.contains(expected), "expected {expected:?} in\n{rules}");
    }
}

#[test]
fn without_net_admin_init_fails_with_1_naming_the_errno() {
    let netns = Netns::lone("unprivileged");
    let namespace = File::open(format!("/run/netns/{}", netns.name)).unwrap();
    let binary = RunnableByNobody::new("unprivileged");
    let mut command = binary.command();
    command.args(["init", "--port", "tcp:80:80", "--to", "10.96.0.10"]);
    as_nobody(&mut command, Some(namespace));
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("EPERM") || stderr.contains("Permission denied"), "{stderr}");
    assert_eq!(netns.ruleset(), "");
}
