//! The I/O edge of status: writes what [`super::status`] computed and publishes its Events,
//! deciding nothing.

use kube::Resource as _;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, Recorder};
use tracing::debug;

use super::context::Context;
use super::error::Error;
use super::status::Note;
use crate::crd::{FIELD_MANAGER, GitRepository, GitRepositoryStatus};

/// Writes the status subresource, unless it would not change.
pub async fn write_status(
    ctx: &Context,
    obj: &GitRepository,
    status: GitRepositoryStatus,
) -> Result<(), Error> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": GitRepository::api_version(&()),
        "kind": GitRepository::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// Publishes an Event on `obj`; a failure to publish is logged, never fatal.
pub async fn publish(ctx: &Context, obj: &GitRepository, note: Note) {
    let event = Event {
        type_: note.type_,
        reason: note.reason.into(),
        note: Some(note.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        debug!(error = %e, "publishing an event");
    }
}
