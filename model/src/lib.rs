//! What hostlb reads and writes on Kubernetes objects, shared by the controller, the kubectl
//! plugin and the end-to-end tests: names, labels and annotations (`names`), a LoadBalancer
//! Service's options (`options`) and the view of a Service that every decision reads
//! (`service`), what hostlb publishes of a node (`address`), what a node's or pod's status
//! says (`readiness`), what a node's labels say of where proxies may run (`node_labels`),
//! whether a node's taints keep proxy pods off it (`taints`), the reasons of hostlb's Events
//! (`reason`), and what the node agent data plane's plans and reports contain (`agent`). Pure:
//! no client, no clock.

pub mod address;
pub mod agent;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod names;
pub mod node_labels;
pub mod options;
pub mod readiness;
pub mod reason;
pub mod service;
pub mod taints;
