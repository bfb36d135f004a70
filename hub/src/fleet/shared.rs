//! The fleet across replicas: each replica writes the agents it holds to Redis (hash
//! `<prefix>fleet`, agent → record) and says so on the channel `<prefix>fleet`; every few seconds it
//! marks the agents it holds (`<prefix>agent:<name>` → its id, with a short expiry, and
//! `<prefix>fleet_seen`, agent → when last seen) and reads which replica holds the others. An agent
//! whose replica died stops being held when its mark expires: it shows disconnected since it was
//! last seen.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Fleet, Stored};
use crate::replicas::{ANNOUNCE_EVERY, Replicas};

/// What the channel says of one agent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Changed {
    agent: String,
    /// Whether the replica that wrote it holds the agent's connection.
    connected: bool,
    origin: String,
}

/// Write what the flusher just wrote to the store to Redis too, for the agents no other replica
/// holds, and tell the others.
pub(super) async fn publish(
    fleet: &Fleet,
    replicas: &Replicas,
    written: Vec<(String, Option<Vec<u8>>)>,
) {
    let held: Vec<String> = fleet.held_here();
    for (name, bytes) in written {
        let Some(bytes) = bytes else { continue };
        let here = held.contains(&name);
        if !here
            && replicas
                .agent_holder(&name)
                .await
                .is_some_and(|h| h != replicas.id)
        {
            // Another replica holds it now: its word is newer than this one's goodbye.
            continue;
        }
        let changed = Changed {
            agent: name.clone(),
            connected: here,
            origin: replicas.id.clone(),
        };
        replicas
            .write_fleet(
                &name,
                &bytes,
                &serde_json::to_string(&changed).unwrap_or_default(),
            )
            .await;
    }
}

/// A change another replica announced: read its record of the agent.
pub(crate) async fn heard(fleet: &Fleet, replicas: &Replicas, payload: &str) {
    let Ok(changed) = serde_json::from_str::<Changed>(payload) else {
        return;
    };
    if changed.origin == replicas.id {
        return;
    }
    if let Some(bytes) = replicas.read_fleet(&changed.agent).await
        && let Ok(stored) = serde_json::from_slice::<Stored>(&bytes)
    {
        fleet.set_remote(&changed.agent, Some(stored), changed.connected);
    }
}

/// Mark the agents held here and learn where the others are, every [`ANNOUNCE_EVERY`], until
/// `shutdown`.
pub(crate) async fn share(fleet: Arc<Fleet>, replicas: Arc<Replicas>, shutdown: CancellationToken) {
    let mut holders: HashMap<String, Option<String>> = HashMap::new();
    loop {
        let held = fleet.held_here();
        replicas.announce_agents(&held).await;
        let names = fleet.cluster_names();
        if let Some(now) = replicas.agent_holders(&names).await {
            let seen = replicas.fleet_seen(&names).await.unwrap_or_default();
            for ((name, holder), seen) in names.iter().zip(now).zip(seen) {
                if held.contains(name) {
                    holders.insert(name.clone(), holder);
                    continue;
                }
                let elsewhere = holder.as_ref().is_some_and(|h| *h != replicas.id);
                if holders.get(name) != Some(&holder) {
                    // Someone else took it, or it went: read the record afresh.
                    let stored = replicas
                        .read_fleet(name)
                        .await
                        .and_then(|b| serde_json::from_slice::<Stored>(&b).ok());
                    fleet.set_remote(name, stored, elsewhere);
                    holders.insert(name.clone(), holder);
                }
                fleet.set_remote_presence(name, elsewhere, seen);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
    }
}
