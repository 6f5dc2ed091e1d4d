//! Requests from the client network namespace, the one place test traffic comes from, and what
//! the echo backend answers them: single requests, and traffic recorded per path while something
//! changes under it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::cluster::Cluster;
use crate::poll::eventually_blocking;

/// An address and port requests go to.
pub type Target = (IpAddr, u16);

impl Cluster {
    /// The client network namespace, the one place test traffic comes from.
    pub fn client(&self) -> Result<ClientNetns> {
        Ok(ClientNetns { netns: self.var("CLIENT_NETNS")?.into() })
    }
}

/// Sends requests from the client network namespace. Blocking: call it from
/// `eventually_blocking` or `spawn_blocking`.
#[derive(Clone)]
pub struct ClientNetns {
    netns: String,
}

impl ClientNetns {
    /// An HTTP GET from the client network namespace; returns the echo backend's answer.
    pub fn http_get(&self, address: IpAddr, port: u16) -> Result<EchoReply> {
        let url = match address {
            IpAddr::V4(v4) => format!("http://{v4}:{port}/"),
            IpAddr::V6(v6) => format!("http://[{v6}]:{port}/"),
        };
        let output =
            Command::new("ip").args(["netns", "exec", &self.netns, "curl", "-sS", "--max-time", "3", &url]).output()?;
        if !output.status.success() {
            bail!("GET {url} from the client failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        EchoReply::parse(&String::from_utf8_lossy(&output.stdout))
    }

    /// A UDP datagram from the client network namespace; returns the echo backend's answer.
    pub fn udp_echo(&self, address: IpAddr, port: u16) -> Result<EchoReply> {
        let target = match address {
            IpAddr::V4(v4) => format!("UDP4:{v4}:{port}"),
            IpAddr::V6(v6) => format!("UDP6:[{v6}]:{port}"),
        };
        let output = Command::new("ip")
            .args(["netns", "exec", &self.netns, "socat", "-T", "2", "-", &target])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("piped stdin").write_all(b"ping\n")?;
                child.wait_with_output()
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        if text.trim().is_empty() {
            bail!("no UDP answer from {target}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        EchoReply::parse(&text)
    }
}

/// What the echo backend answers: which pod served, and the address it saw the request from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoReply {
    pub pod: String,
    pub node: String,
    pub client: IpAddr,
}

impl EchoReply {
    pub fn parse(text: &str) -> Result<Self> {
        let fields: BTreeMap<&str, &str> = text.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        let field = |key: &str| fields.get(key).copied().ok_or_else(|| anyhow!("echo reply {text:?} has no {key}="));
        let client = field("client")?;
        let client_ip = client.rsplit_once(':').map_or(client, |(ip, _)| ip).trim_matches(|c| c == '[' || c == ']');
        Ok(EchoReply {
            pod: field("pod")?.into(),
            node: field("node")?.into(),
            client: client_ip.parse().with_context(|| format!("echo reply {text:?}: bad client address"))?,
        })
    }
}

/// Waits until `address:port` answers a request from the client; returns the answer.
pub async fn answers(cluster: &Cluster, address: IpAddr, port: u16, timeout: Duration) -> Result<EchoReply> {
    let client = cluster.client()?;
    eventually_blocking(timeout, move || client.http_get(address, port)).await
}

/// Fails unless every request to `address:port` from the client fails for `during`.
pub async fn refuses(cluster: &Cluster, address: IpAddr, port: u16, during: Duration) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < during {
        let client = cluster.client()?;
        if let Ok(reply) = tokio::task::spawn_blocking(move || client.http_get(address, port)).await? {
            bail!("{address}:{port} answered ({reply:?}) but should refuse");
        }
    }
    Ok(())
}

/// What one path answered while a change went on: requests sent and lost, and the longest run of
/// failures, from the first failed request to the next answered one.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathRecord {
    pub sent: u32,
    pub lost: u32,
    pub longest_gap: Duration,
}

impl std::fmt::Display for PathRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sent, {} lost, longest gap {:.1}s", self.sent, self.lost, self.longest_gap.as_secs_f64())
    }
}

/// Sends a request to `target` every `every` until `stop` is set and the path answers again;
/// fails when it has not answered for `give_up`.
pub async fn record_path(
    client: ClientNetns,
    target: Target,
    every: Duration,
    stop: Arc<AtomicBool>,
    give_up: Duration,
) -> Result<PathRecord> {
    let mut record = PathRecord::default();
    let mut failing_since = None::<Instant>;
    while !stop.load(Ordering::Acquire) || failing_since.is_some() {
        let client = client.clone();
        let answered = tokio::task::spawn_blocking(move || client.http_get(target.0, target.1).is_ok()).await?;
        record.sent += 1;
        match (answered, failing_since) {
            (false, None) => failing_since = Some(Instant::now()),
            (true, Some(since)) => {
                record.longest_gap = record.longest_gap.max(since.elapsed());
                failing_since = None;
            }
            _ => {}
        }
        if !answered {
            record.lost += 1;
        }
        if failing_since.is_some_and(|since| since.elapsed() > give_up) {
            bail!("{}:{} has not answered for {give_up:?}", target.0, target.1);
        }
        tokio::time::sleep(every).await;
    }
    Ok(record)
}

/// Requests on several paths at once, each recorded on its own, until `finish`.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    recorders: Vec<(Target, tokio::task::JoinHandle<Result<PathRecord>>)>,
}

impl Traffic {
    pub fn start(client: &ClientNetns, targets: &[Target], every: Duration, give_up: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let recorders = targets
            .iter()
            .map(|&target| {
                let recording = record_path(client.clone(), target, every, stop.clone(), give_up);
                (target, tokio::spawn(recording))
            })
            .collect();
        Traffic { stop, recorders }
    }

    /// Each path's record, in the order of the targets.
    pub async fn finish(self) -> Result<Vec<(Target, PathRecord)>> {
        self.stop.store(true, Ordering::Release);
        let mut records = Vec::new();
        for (target, recorder) in self.recorders {
            records.push((target, recorder.await??));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_reply_is_parsed_for_both_families() {
        let v4 = EchoReply::parse("pod=echo-1 node=node-1 client=10.250.0.2:51234\n").unwrap();
        assert_eq!(v4.client, "10.250.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((v4.pod.as_str(), v4.node.as_str()), ("echo-1", "node-1"));
        let v6 = EchoReply::parse("pod=p node=n client=[fd00::2]:80").unwrap();
        assert_eq!(v6.client, "fd00::2".parse::<IpAddr>().unwrap());
        assert!(EchoReply::parse("garbage").is_err());
    }
}
