//! Several "hosts" on this machine: Linux network namespaces (`ip netns`), each with one
//! veth link to a switch (a bridge in a namespace of its own, [`SWITCH`]) and an address of
//! its own in [`SUBNET`]. The test plugs into the switch too, at [`GATEWAY`] (where its own
//! servers listen), and reaches every host at its address; a host's link can be cut
//! (`ip link set eth0 down` inside it) and restored, as a network failure would.
//!
//! Names all start with [`PREFIX`]; [`Topology::new`] first removes whatever a killed run
//! left, and [`Topology`]'s `Drop` removes the namespaces and the bridge. Nothing here
//! touches `docker0`, the machine's iptables, or any interface it did not make.

use std::process::Command;

/// Every namespace, link and bridge made here starts with this.
pub const PREFIX: &str = "tmh";
/// The namespace of the switch: a bridge (`br0`) that every host and the test plug into.
/// It has a namespace of its own because in the test's namespace Docker's iptables rules
/// (FORWARD policy DROP, with `br_netfilter` loaded) would drop the hosts' traffic.
pub const SWITCH: &str = "tmh-sw";
/// The test's link to the switch, in the test's namespace.
pub const GATEWAY_LINK: &str = "tmh-gw";
/// The hosts' network: a private range nothing else on this machine uses.
pub const SUBNET: &str = "10.231.23";
/// The bridge's address: the test itself, as the hosts see it.
pub const GATEWAY: &str = "10.231.23.1";

/// Runs `ip ARGS`; panics with its error output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS`, ignoring failure (cleanup of what may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// One host: a network namespace with `eth0` (its end of a veth pair) at `addr`.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (`ip netns`), e.g. `tmh-w1`.
    pub netns: String,
    /// Its address in [`SUBNET`].
    pub addr: String,
}

impl Host {
    /// A command that runs `program` in this host's network namespace only (nsenter keeps
    /// the mounts, so cgroups and sockets on disk stay visible; `ip netns exec` would
    /// remount /sys).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg(program);
        c
    }

    /// Cuts the host off the network: its link goes down, its connections hang.
    pub fn cut(&self) {
        ip(&["-n", &self.netns, "link", "set", "eth0", "down"]);
    }

    /// Brings its link back (its address and route come back with it).
    pub fn restore(&self) {
        ip(&["-n", &self.netns, "link", "set", "eth0", "up"]);
    }
}

/// The bridge and the hosts on it; removed when dropped.
pub struct Topology {
    hosts: Vec<Host>,
}

impl Topology {
    /// Makes the bridge and one host per `(name, last octet)`: namespace `tmh-NAME` at
    /// `10.231.23.OCTET`. Leftovers of an earlier run are removed first.
    pub fn new(hosts: &[(&str, u8)]) -> Topology {
        sweep();
        let mut topology = Topology { hosts: Vec::new() };
        ip(&["netns", "add", SWITCH]);
        ip(&["-n", SWITCH, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", SWITCH, "link", "set", "br0", "up"]);
        // The test's own port on the switch.
        ip(&[
            "link",
            "add",
            GATEWAY_LINK,
            "type",
            "veth",
            "peer",
            "name",
            "gw",
            "netns",
            SWITCH,
        ]);
        ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", GATEWAY_LINK]);
        ip(&["link", "set", GATEWAY_LINK, "up"]);
        ip(&["-n", SWITCH, "link", "set", "gw", "master", "br0", "up"]);
        for (name, octet) in hosts {
            let netns = format!("{PREFIX}-{name}");
            let addr = format!("{SUBNET}.{octet}");
            ip(&["netns", "add", &netns]);
            topology.hosts.push(Host {
                netns: netns.clone(),
                addr: addr.clone(),
            });
            // The switch's end is named after the host.
            ip(&[
                "-n", SWITCH, "link", "add", &netns, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ]);
            ip(&["-n", SWITCH, "link", "set", &netns, "master", "br0", "up"]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
        }
        topology
    }

    /// The host called `name` (as given to [`Topology::new`]).
    pub fn host(&self, name: &str) -> &Host {
        let netns = format!("{PREFIX}-{name}");
        self.hosts
            .iter()
            .find(|h| h.netns == netns)
            .unwrap_or_else(|| panic!("no host {name}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting a namespace deletes the veth pairs with an end in it.
            ip_quiet(&["netns", "del", &host.netns]);
        }
        ip_quiet(&["netns", "del", SWITCH]);
        ip_quiet(&["link", "del", GATEWAY_LINK]);
    }
}

/// Removes namespaces and links named [`PREFIX`]`-*` that a killed run left behind.
pub fn sweep() {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&format!("{PREFIX}-")) {
            ip_quiet(&["netns", "del", name]);
        }
    }
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link show");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "7: tmh-w1@if2: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if name.starts_with(&format!("{PREFIX}-")) {
            ip_quiet(&["link", "del", name]);
        }
    }
}
