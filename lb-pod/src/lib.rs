//! `hostlb-lb`: runs in each proxy pod of a LoadBalancer Service, in the pod's own network
//! namespace, and forwards the Service's ports to its ClusterIP. For `externalTrafficPolicy:
//! Local` (`--to node-endpoints`) it installs the tables and the source filter with nothing to
//! forward; the endpoint follower (`hostlb-agent`) fills in the node's ready endpoints. The
//! opt-in node agent uses the library instead: one table in the node's own namespace for every
//! Service the node serves.
//!
//! The command line is `hostlb_contract::Command`, the very type the controller writes it
//! from. Layers: `port_forwarding` (the parsed arguments to a validated description), `rules`
//! (the nftables objects for it), `node_table` (the node agent's table, from the same
//! per-Service rules), `rule_text` (a step's nft spelling, a rule's read from its expressions),
//! `netlink` (their bytes and the kernel's answers), `conntrack` (which flows a change of
//! destinations leaves stale, and the messages that list and delete them): all pure; `kernel`,
//! `probe` and `hold` do the I/O. A library beside the binary so that the pure layers can be
//! driven from outside, as the fuzz targets and the node agent do.

pub mod conntrack;
pub mod error;
pub mod hold;
pub mod kernel;
pub mod netlink;
pub mod node_table;
pub mod port_forwarding;
pub mod probe;
pub mod rule_text;
pub mod rules;
