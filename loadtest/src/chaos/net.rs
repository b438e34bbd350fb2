//! The chaos run's network: each node in its own network namespace, joined
//! by veth pairs to one bridge in the generator's namespace, so partitions
//! are nftables drop rules inside a node's namespace.
//!
//! ```text
//!   generator (root namespace), client addresses 10.77.Y.200.. on the bridge
//!        |
//!   bridge hcb<pid> 10.77.Y.254/24
//!     |            |            |
//!   veth         veth         veth
//!     |            |            |
//!   ns hc<pid>-n1  ns ...-n2    ns ...-n3      eth0 10.77.Y.1, .2, .3
//! ```
//!
//! Nodes bind their gateway and QUIC ports on their namespace's address;
//! the store stays a file every node opens (the filesystem is not cut).
//! Each node's namespace has a table `inet hushchaos` with an input and an
//! output chain; [`Net::apply`] rewrites every namespace's rules at once
//! from the set of active network faults (each dropping what its node must
//! not hear or say: other nodes' addresses for a peer cut or a split, the
//! client addresses for a client cut). Names carry the generator's pid; a
//! later run removes what a dead run left behind. Needs root, `ip`
//! (iproute2) and `nft` (nftables).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::Context as _;

use crate::history::FaultKind;
use crate::sync::lock;

/// The nftables table every node namespace gets.
const TABLE: &str = "hushchaos";
/// Client addresses start at this host number on the bridge.
const FIRST_CLIENT_HOST: u8 = 200;
/// The bridge's own host number.
const BRIDGE_HOST: u8 = 254;
/// The second octet of the subnets tried when none is configured.
const SUBNET_B: u8 = 77;

/// A network fault that is active: its id, kind and nodes (indexes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFault {
    pub id: u32,
    pub kind: FaultKind,
    pub nodes: Vec<usize>,
}

/// The namespaces, the bridge, and the active network faults.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    bridge: String,
    subnet: [u8; 3],
    nodes: usize,
    clients: usize,
    active: Mutex<Vec<NetFault>>,
}

/// Checks that namespaces can be made here: root, `ip`, `nft`.
pub fn preflight() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    anyhow::ensure!(
        uid == "0",
        "chaos with network namespaces needs root (effective uid is {uid}); \
         set chaos.netns = false to run without partition faults"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        anyhow::ensure!(
            ok,
            "chaos needs `{tool}` (Debian package {package}: apt-get install {package})"
        );
    }
    Ok(())
}

/// Runs a command; fails with its stderr.
fn sh(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {program}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name `hc<pid>-...` or `hcb<pid>`, if it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("hcb")
        .or_else(|| name.strip_prefix("hc"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes namespaces and bridges that runs no longer alive left behind.
fn remove_stale() {
    for line in output("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if owner_pid(name).is_some_and(|p| !pid_alive(p)) && name.contains('-') {
            let _ = sh("ip", &["netns", "del", name], None);
        }
    }
    for line in output("ip", &["-o", "link", "show", "type", "bridge"]).lines() {
        let name = line
            .split(':')
            .nth(1)
            .map(str::trim)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("");
        if name.starts_with("hcb") && owner_pid(name).is_some_and(|p| !pid_alive(p)) {
            let _ = sh("ip", &["link", "del", name], None);
        }
    }
}

/// The first `10.77.Y` with no address or route on this host yet.
fn free_subnet() -> anyhow::Result<[u8; 3]> {
    let used = output("ip", &["-4", "-o", "addr", "show"]) + &output("ip", &["-4", "route"]);
    (0..=255u8)
        .map(|y| [10, SUBNET_B, y])
        .find(|s| !used.contains(&format!("{}.{}.{}.", s[0], s[1], s[2])))
        .context("no free 10.77.Y.0/24 subnet")
}

fn parse_subnet(s: &str) -> anyhow::Result<[u8; 3]> {
    let parts: Vec<u8> = s
        .trim_end_matches(".0/24")
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("chaos.subnet {s:?}: expected A.B.C"))?;
    anyhow::ensure!(parts.len() == 3, "chaos.subnet {s:?}: expected A.B.C");
    Ok([parts[0], parts[1], parts[2]])
}

impl Net {
    /// Makes `nodes` namespaces on a bridge with `clients` client
    /// addresses (`subnet` "A.B.C", or empty for a free 10.77.Y).
    pub fn create(nodes: usize, clients: usize, subnet: &str) -> anyhow::Result<Net> {
        preflight()?;
        anyhow::ensure!(
            nodes < FIRST_CLIENT_HOST as usize
                && clients <= (BRIDGE_HOST - FIRST_CLIENT_HOST) as usize,
            "too many nodes or client addresses for one /24"
        );
        remove_stale();
        let subnet = if subnet.is_empty() {
            free_subnet()?
        } else {
            parse_subnet(subnet)?
        };
        let pid = std::process::id();
        let net = Net {
            prefix: format!("hc{pid}"),
            bridge: format!("hcb{pid}"),
            subnet,
            nodes,
            clients: clients.max(1),
            active: Mutex::new(Vec::new()),
        };
        // From here on, dropping `net` removes whatever was made.
        net.build().context("setting up network namespaces")?;
        Ok(net)
    }

    fn build(&self) -> anyhow::Result<()> {
        let br = self.bridge.as_str();
        sh("ip", &["link", "add", br, "type", "bridge"], None)?;
        sh("ip", &["link", "set", br, "up"], None)?;
        let cidr = |host: u8| format!("{}/24", self.addr(host));
        sh("ip", &["addr", "add", &cidr(BRIDGE_HOST), "dev", br], None)?;
        for c in 0..self.clients {
            let a = cidr(FIRST_CLIENT_HOST + c as u8);
            sh("ip", &["addr", "add", &a, "dev", br], None)?;
        }
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let (host_end, node_end) = (
                format!("{}a{i}", self.prefix),
                format!("{}b{i}", self.prefix),
            );
            sh("ip", &["netns", "add", &ns], None)?;
            sh(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", &node_end,
                ],
                None,
            )?;
            sh("ip", &["link", "set", &node_end, "netns", &ns], None)?;
            sh(
                "ip",
                &["-n", &ns, "link", "set", &node_end, "name", "eth0"],
                None,
            )?;
            sh("ip", &["link", "set", &host_end, "master", br], None)?;
            sh("ip", &["link", "set", &host_end, "up"], None)?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
            let a = cidr(i as u8 + 1);
            sh("ip", &["-n", &ns, "addr", "add", &a, "dev", "eth0"], None)?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"], None)?;
            let table = format!(
                "add table inet {TABLE}\n\
                 add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
                 add chain inet {TABLE} output {{ type filter hook output priority 0; policy accept; }}\n"
            );
            sh(
                "ip",
                &["netns", "exec", &ns, "nft", "-f", "-"],
                Some(&table),
            )?;
        }
        Ok(())
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], host)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }

    /// Node `i`'s address (gateway and QUIC bind here).
    pub fn node_addr(&self, i: usize) -> Ipv4Addr {
        self.addr(i as u8 + 1)
    }

    /// The generator's source addresses.
    pub fn client_addrs(&self) -> Vec<Ipv4Addr> {
        (0..self.clients)
            .map(|c| self.addr(FIRST_CLIENT_HOST + c as u8))
            .collect()
    }

    /// What to put before a command to run it in node `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.ns(i)]
    }

    /// Starts network fault `f` (with the others still active).
    pub async fn start(&self, f: NetFault) -> anyhow::Result<()> {
        let rules = {
            let mut a = lock(&self.active);
            a.push(f);
            self.rules(&a)
        };
        self.load(rules).await
    }

    /// Heals network fault `id` (the others stay).
    pub async fn heal(&self, id: u32) -> anyhow::Result<()> {
        let rules = {
            let mut a = lock(&self.active);
            a.retain(|f| f.id != id);
            self.rules(&a)
        };
        self.load(rules).await
    }

    /// Each node's nft script for the active faults.
    fn rules(&self, active: &[NetFault]) -> Vec<String> {
        let blocked = blocked(self.nodes, active);
        (0..self.nodes)
            .map(|i| {
                let mut s =
                    format!("flush chain inet {TABLE} input\nflush chain inet {TABLE} output\n");
                let mut addrs: Vec<Ipv4Addr> = Vec::new();
                for b in &blocked[i] {
                    match b {
                        Peer::Node(j) => addrs.push(self.node_addr(*j)),
                        Peer::Clients => addrs.extend(self.client_addrs()),
                    }
                }
                if !addrs.is_empty() {
                    let set = addrs
                        .iter()
                        .map(Ipv4Addr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    s += &format!(
                        "add rule inet {TABLE} input ip saddr {{ {set} }} drop\n\
                         add rule inet {TABLE} output ip daddr {{ {set} }} drop\n"
                    );
                }
                s
            })
            .collect()
    }

    async fn load(&self, rules: Vec<String>) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for (i, script) in rules.into_iter().enumerate() {
            let ns = self.ns(i);
            tasks.push(tokio::task::spawn_blocking(move || {
                sh(
                    "ip",
                    &["netns", "exec", &ns, "nft", "-f", "-"],
                    Some(&script),
                )
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }
}

impl Drop for Net {
    /// Removes the namespaces (their veth ends go with them) and the
    /// bridge.
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = sh("ip", &["netns", "del", &self.ns(i)], None);
        }
        let _ = sh("ip", &["link", "del", &self.bridge], None);
    }
}

/// What a node must not exchange packets with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Node(usize),
    Clients,
}

/// Per node, what the active faults cut it from (both directions are cut
/// on both sides, so a rule set never depends on another's).
fn blocked(nodes: usize, active: &[NetFault]) -> Vec<BTreeSet<Peer>> {
    let mut b = vec![BTreeSet::new(); nodes];
    for f in active {
        let inside = |i: usize| f.nodes.contains(&i);
        match f.kind {
            FaultKind::IsolatePeers | FaultKind::Split => {
                for (i, cut) in b.iter_mut().enumerate() {
                    cut.extend(
                        (0..nodes)
                            .filter(|j| inside(i) != inside(*j))
                            .map(Peer::Node),
                    );
                }
            }
            FaultKind::IsolateClients => {
                for &i in &f.nodes {
                    if i < nodes {
                        b[i].insert(Peer::Clients);
                    }
                }
            }
            _ => {}
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: u32, kind: FaultKind, nodes: &[usize]) -> NetFault {
        NetFault {
            id,
            kind,
            nodes: nodes.to_vec(),
        }
    }

    #[test]
    fn cuts_are_symmetric_and_compose() {
        use Peer::*;
        let set = |v: &[Peer]| v.iter().copied().collect::<BTreeSet<Peer>>();
        // n2 cut from its peers: n2 drops n1 and n3, they drop n2.
        let b = blocked(3, &[f(1, FaultKind::IsolatePeers, &[1])]);
        assert_eq!(
            b,
            vec![set(&[Node(1)]), set(&[Node(0), Node(2)]), set(&[Node(1)])]
        );
        // A 2|3 split of five, and n5's clients cut at the same time.
        let b = blocked(
            5,
            &[
                f(1, FaultKind::Split, &[0, 1]),
                f(2, FaultKind::IsolateClients, &[4]),
            ],
        );
        assert_eq!(b[0], set(&[Node(2), Node(3), Node(4)]));
        assert_eq!(b[3], set(&[Node(0), Node(1)]));
        assert_eq!(b[4], set(&[Node(0), Node(1), Clients]));
        assert!(blocked(3, &[]).iter().all(BTreeSet::is_empty));
    }

    #[test]
    fn names_carry_the_owner_pid() {
        assert_eq!(owner_pid("hc1234-n1"), Some(1234));
        assert_eq!(owner_pid("hcb99"), Some(99));
        assert_eq!(owner_pid("other"), None);
        assert_eq!(parse_subnet("10.77.3").unwrap(), [10, 77, 3]);
        assert!(parse_subnet("10.77").is_err());
    }
}
