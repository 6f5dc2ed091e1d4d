//! A namespace of one test, and what a test makes in it: the echo backend and LoadBalancer
//! Services for it.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::cluster::{Cluster, Nodes};
use crate::poll::eventually;

pub const ECHO_HTTP_PORT: u16 = 8080;
pub const ECHO_UDP_PORT: u16 = 8081;

/// One TCP port of a Service, to the echo backend's HTTP port.
pub fn http(port: u16) -> Vec<(&'static str, &'static str, u16, u16)> {
    vec![("http", "TCP", port, ECHO_HTTP_PORT)]
}

impl Cluster {
    /// A fresh namespace, deleted when the returned guard drops (also when the test fails).
    pub async fn namespace(&self, test: &str) -> Result<TestNamespace> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let name = format!("e2e-{test}-{:05x}", nanos % 0xfffff);
        let api: Api<Namespace> = Api::all(self.client.clone());
        let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
        api.create(&PostParams::default(), &namespace).await?;
        Ok(TestNamespace {
            name,
            client: self.client.clone(),
            kubectl: self.var("KUBECTL")?.into(),
            kubeconfig: self.var("KUBECONFIG")?.into(),
        })
    }
}

/// A namespace of one test; deleted on drop with kubectl so that it works from a panic too.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    kubectl: String,
    kubeconfig: String,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

impl TestNamespace {
    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The echo backend: `replicas` pods labelled `app=<name>`, optionally pinned to one node.
    pub async fn echo_backend(&self, cluster: &Cluster, name: &str, replicas: i32, node: Option<&str>) -> Result<()> {
        let mut pod_spec = json!({
            "containers": [{
                "name": "echo",
                "image": cluster.var("ECHO_IMAGE")?,
                "imagePullPolicy": "IfNotPresent",
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } }
                ],
                "ports": [
                    { "containerPort": ECHO_HTTP_PORT, "protocol": "TCP" },
                    { "containerPort": ECHO_UDP_PORT, "protocol": "UDP" }
                ],
                "readinessProbe": { "tcpSocket": { "port": ECHO_HTTP_PORT }, "periodSeconds": 1 }
            }],
            "terminationGracePeriodSeconds": 1
        });
        if let Some(node) = node {
            pod_spec["nodeSelector"] = json!({ "kubernetes.io/hostname": node });
        }
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": name } },
                "template": { "metadata": { "labels": { "app": name } }, "spec": pod_spec }
            }
        }))?;
        self.deployments().create(&PostParams::default(), &deployment).await?;
        Ok(())
    }

    pub async fn scale(&self, deployment: &str, replicas: i32) -> Result<()> {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.deployments().patch(deployment, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Waits until the Deployment has exactly `replicas` ready pods.
    pub async fn wait_ready(&self, deployment: &str, replicas: i32, timeout: Duration) -> Result<()> {
        eventually(timeout, || async {
            let d = self.deployments().get(deployment).await?;
            let status = d.status.unwrap_or_default();
            let ready = status.ready_replicas.unwrap_or(0);
            let total = status.replicas.unwrap_or(0);
            if ready == replicas && total == replicas {
                Ok(())
            } else {
                bail!("{deployment}: {ready}/{total} ready, want {replicas}")
            }
        })
        .await
    }

    /// The echo backend `echo`, one replica on node-1, once Ready (within `timeout`).
    pub async fn echo_on_node1(&self, cluster: &Cluster, nodes: &Nodes, timeout: Duration) -> Result<()> {
        self.echo_backend(cluster, "echo", 1, Some(&nodes.node1)).await?;
        self.wait_ready("echo", 1, timeout).await
    }

    /// A LoadBalancer Service for the echo backend `app`; `ports` are (name, protocol, port, targetPort).
    pub async fn load_balancer(
        &self,
        name: &str,
        app: &str,
        ports: &[(&str, &str, u16, u16)],
        extra_spec: Value,
    ) -> Result<Service> {
        self.load_balancer_with_metadata(name, app, ports, extra_spec, json!({})).await
    }

    /// A LoadBalancer Service whose metadata (annotations, labels) is there from its creation on.
    pub async fn load_balancer_with_metadata(
        &self,
        name: &str,
        app: &str,
        ports: &[(&str, &str, u16, u16)],
        extra_spec: Value,
        extra_metadata: Value,
    ) -> Result<Service> {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(port_name, protocol, port, target)| {
                json!({ "name": port_name, "protocol": protocol, "port": port, "targetPort": target })
            })
            .collect();
        let mut spec = json!({ "type": "LoadBalancer", "selector": { "app": app }, "ports": ports });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        let mut metadata = json!({ "name": name });
        if let (Some(metadata), Some(extra)) = (metadata.as_object_mut(), extra_metadata.as_object()) {
            metadata.extend(extra.clone());
        }
        let service: Service = serde_json::from_value(json!({ "metadata": metadata, "spec": spec }))?;
        Ok(self.services().create(&PostParams::default(), &service).await?)
    }

    /// The echo backend on node-1 and a LoadBalancer Service for it on `port`, once the Service
    /// publishes both nodes (each wait bounded by `timeout`).
    pub async fn echo_service(
        &self,
        cluster: &Cluster,
        nodes: &Nodes,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<()> {
        self.echo_on_node1(cluster, nodes, timeout).await?;
        self.load_balancer(name, "echo", &http(port), json!({})).await?;
        cluster.wait_for_addresses(&self.name, name, &[nodes.ip1, nodes.ip2], timeout).await?;
        Ok(())
    }

    /// An older ClusterIP Service `older` (selecting `older_app`) on `port`, then a younger
    /// LoadBalancer Service `younger` (selecting `echo`) on the same port, published on both
    /// nodes; then `older` switched to LoadBalancer: a later claimant of a port that is served.
    pub async fn older_switched_onto_a_served_port(
        &self,
        cluster: &Cluster,
        nodes: &Nodes,
        older_app: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<()> {
        let older = json!({
            "metadata": { "name": "older" },
            "spec": {
                "type": "ClusterIP",
                "selector": { "app": older_app },
                "ports": [{ "name": "http", "protocol": "TCP", "port": port, "targetPort": ECHO_HTTP_PORT }]
            }
        });
        self.services().create(&PostParams::default(), &serde_json::from_value(older)?).await?;
        self.a_second_after("older").await?;
        self.load_balancer("younger", "echo", &http(port), json!({})).await?;
        cluster.wait_for_addresses(&self.name, "younger", &[nodes.ip1, nodes.ip2], timeout).await?;
        self.patch_service("older", json!({ "spec": { "type": "LoadBalancer" } })).await?;
        Ok(())
    }

    /// A merge patch. The 1.20 API server's Service storage can answer a patch with 409 Conflict
    /// when another write (the controller's status or finalizer) lands at the same moment, even
    /// though the patch names no resourceVersion; a conflict is retried, as kubectl's patch does.
    /// Waits until a Service created now is younger than `older`: creation times are kept to the
    /// second, and hostlb orders two claims of the same second by UID, so a Service created in
    /// the same second as another is not its junior.
    pub async fn a_second_after(&self, older: &str) -> Result<()> {
        let service = self.services().get(older).await?;
        let created = service.metadata.creation_timestamp.context("no creation time")?.0;
        while k8s_openapi::jiff::Timestamp::now().as_second() <= created.as_second() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn patch_service(&self, name: &str, patch: Value) -> Result<Service> {
        let mut attempts = 0;
        loop {
            match self.services().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => attempts += 1,
                patched => return Ok(patched?),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn delete_service(&self, name: &str) -> Result<()> {
        self.services().delete(name, &DeleteParams::default()).await?;
        Ok(())
    }
}
