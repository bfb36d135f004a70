//! The I/O edge of status: writes what [`super::status`] computed and publishes its Events,
//! deciding nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource as _;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, Recorder, Reporter};
use tokio::sync::mpsc;
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
    write_status_with(&ctx.client, obj, status).await
}

/// [`write_status`] with `client`.
pub async fn write_status_with(
    client: &kube::Client,
    obj: &GitRepository,
    status: GitRepositoryStatus,
) -> Result<(), Error> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GitRepository> = Api::namespaced(client.clone(), &namespace);
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

/// Events waiting for the publisher, at most: a reconcile waits only when this many are queued.
const EVENTS_QUEUED: usize = 1024;

/// An Event and the object it is about, on their way to the publisher.
pub type Queued = (Event, ObjectReference);

/// Starts the publisher: Events are sent in the order they are queued, by one task, so that no
/// reconcile waits for the API server to record one. A recorder is made per Event: kube's
/// `Recorder` folds Events with the same reason into one series that keeps the first note, so a
/// second "Applied revision" would still name the first revision. Events come only on a change, so
/// there is no flood to fold.
pub fn publisher(client: kube::Client, reporter: Reporter) -> mpsc::Sender<Queued> {
    let (tx, mut rx) = mpsc::channel::<Queued>(EVENTS_QUEUED);
    tokio::spawn(async move {
        while let Some((event, reference)) = rx.recv().await {
            let recorder = Recorder::new(client.clone(), reporter.clone());
            if let Err(e) = recorder.publish(&event, &reference).await {
                debug!(error = %e, "publishing an event");
            }
        }
    });
    tx
}

/// Queues an Event on `obj` for the publisher; a failure to publish is logged, never fatal.
pub async fn publish(ctx: &Context, obj: &GitRepository, note: Note) {
    let event = Event {
        type_: note.type_,
        reason: note.reason.into(),
        note: Some(note.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if ctx.events.send((event, obj.object_ref(&()))).await.is_err() {
        debug!("the event publisher has stopped");
    }
}
