//! The harness itself, proved against the real API server: what kubectl writes, kube-rs reads back;
//! CRDs become established; the versions are the pinned ones.

use anyhow::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::fixtures::{config_map, namespace, widget_crd};
use tether_e2e::kubectl::Kubectl;

#[tokio::test]
async fn kubectl_writes_and_kube_rs_reads_back() -> Result<()> {
    let ns = TestNamespace::create("harness-cm").await?;
    let other = format!("{}-extra", ns.name());
    ns.kubectl().apply(&format!(
        "{}---\n{}",
        namespace(&other),
        config_map(ns.name(), "settings", "hello")
    ))?;
    let client = ns.client().await?;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns.name())
        .get("settings")
        .await?;
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hello")
    );
    let created = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .get(&other)
        .await?;
    assert_eq!(created.metadata.name.as_deref(), Some(other.as_str()));
    ns.kubectl()
        .run(&["delete", "namespace", &other, "--wait=false"])?;
    Ok(())
}

#[tokio::test]
async fn applied_crd_becomes_established_and_serves_objects() -> Result<()> {
    let ns = TestNamespace::create("harness-crd").await?;
    // A group unique to this run, so reruns against a kept cluster do not collide.
    let group = format!("h{}.e2e.tether.dev", std::process::id());
    let crd = widget_crd(&group);
    ns.kubectl().apply(&crd)?;
    ns.kubectl().run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        &format!("crd/widgets.{group}"),
    ])?;

    let gvk = GroupVersionKind::gvk(&group, "v1", "Widget");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let api = Api::<DynamicObject>::namespaced_with(ns.client().await?, ns.name(), &resource);
    let mut widget = DynamicObject::new("small", &resource);
    widget.data = serde_json::json!({"spec": {"size": 3}});
    api.create(&PostParams::default(), &widget).await?;
    // By its full name: other tests install Widget kinds of their own groups at the same time, and
    // a bare `widgets` means whichever group discovery ranks first.
    let listed = ns.kubectl().run(&[
        "get",
        &format!("widgets.{group}"),
        "-n",
        ns.name(),
        "-o",
        "name",
    ])?;
    assert_eq!(listed.trim(), format!("widget.{group}/small"));
    ns.kubectl()
        .run(&["delete", "crd", &format!("widgets.{group}"), "--wait=false"])?;
    Ok(())
}

#[test]
fn kubectl_version_reports_the_pinned_release_for_client_and_server() -> Result<()> {
    let kubectl = Kubectl::for_plane(shared());
    let out = kubectl.run(&["version", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    for side in ["clientVersion", "serverVersion"] {
        let git = v[side]["gitVersion"].as_str().unwrap_or_default();
        assert!(
            git.starts_with("v1.36."),
            "{side} is {git:?}, want v1.36.x; kubectl version said: {out}"
        );
        assert_eq!(v[side]["minor"].as_str(), Some("36"), "{side}: {out}");
    }
    Ok(())
}

#[test]
fn control_plane_processes_are_running() {
    let plane = shared();
    let names: Vec<String> = plane.pids().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
    for (name, pid) in plane.pids() {
        assert!(
            tether_e2e::process::alive(pid),
            "{name} ({pid}) is not running"
        );
    }
}
