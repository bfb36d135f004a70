//! Which objects of a revision another `GitRepository` holds: an object that exists already and is
//! labelled as another's, which still lists it in its inventory, is refused (`OwnershipConflict`).

use std::collections::BTreeMap;

use kube::api::{Api, DynamicObject};

use super::{ApplyError, describe};
use crate::crd::GitRepository;
use crate::plan::{PlannedObject, owner_labels};

/// An object of the revision that another `GitRepository` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The object, as [`describe`] names it.
    pub object: String,
    /// The `GitRepository` applying this revision, `namespace/name`.
    pub claimant: String,
    /// The `GitRepository` the object's labels name, `namespace/name`.
    pub owner: String,
}

/// The owner, `(namespace, name)`, that `labels` name when it is not `(namespace, name)` of `ours`.
/// An object with no owner labels belongs to nobody.
fn other_owner(
    labels: Option<&BTreeMap<String, String>>,
    ours: (&str, &str),
) -> Option<(String, String)> {
    let theirs = owner_labels(labels)?;
    (theirs != ours).then(|| (theirs.0.to_owned(), theirs.1.to_owned()))
}

/// The planned object's own owner labels, `(namespace, name)`, as the plan stamped them.
fn planned_owner(object: &PlannedObject) -> (&str, &str) {
    owner_labels(object.object.metadata.labels.as_ref()).unwrap_or_default()
}

/// Whether the live `object` belongs to another `GitRepository`: its labels name one that exists
/// and lists the object in its inventory. One the client may not read counts as existing.
pub(super) async fn claimed_elsewhere(
    api: &Api<DynamicObject>,
    owners: &kube::Client,
    object: &PlannedObject,
) -> Result<Option<Conflict>, ApplyError> {
    let api_error = |source| ApplyError::Api {
        object: describe(&object.id),
        source,
    };
    let live = match api.get_metadata_opt(&object.id.name).await {
        Ok(Some(live)) => live,
        Ok(None) => return Ok(None),
        // It may be patched but not read: the apply decides, as before.
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(None),
        Err(e) => return Err(api_error(e)),
    };
    let ours = planned_owner(object);
    let Some((namespace, name)) = other_owner(live.metadata.labels.as_ref(), ours) else {
        return Ok(None);
    };
    if namespace.is_empty() || name.is_empty() {
        // Half a label names no GitRepository: the object is taken over.
        return Ok(None);
    }
    let holds = match Api::<GitRepository>::namespaced(owners.clone(), &namespace)
        .get_opt(&name)
        .await
    {
        Ok(Some(owner)) => owner.status.as_ref().is_some_and(|s| {
            s.inventory
                .iter()
                .any(|entry| entry.same_object(&object.id))
        }),
        Ok(None) => false,
        Err(kube::Error::Api(s)) if s.code == 403 => true,
        // A label value that is no valid name names no GitRepository.
        Err(kube::Error::Api(s)) if s.code == 400 || s.code == 404 => false,
        Err(e) => return Err(api_error(e)),
    };
    Ok(holds.then(|| Conflict {
        object: describe(&object.id),
        claimant: format!("{}/{}", ours.0, ours.1),
        owner: format!("{namespace}/{name}"),
    }))
}

/// Up to this many conflicts are named in one message; the rest are counted.
const CONFLICTS_NAMED: usize = 5;

pub(super) fn list_conflicts(conflicts: &[Conflict]) -> String {
    let Some(first) = conflicts.first() else {
        return String::new();
    };
    let named: Vec<String> = conflicts
        .iter()
        .take(CONFLICTS_NAMED)
        .map(|c| format!("{} belongs to GitRepository {}", c.object, c.owner))
        .collect();
    let more = conflicts.len().saturating_sub(CONFLICTS_NAMED);
    let more = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    format!(
        "{}{more}: GitRepository {} does not take over objects another GitRepository applied; \
         nothing of this revision was applied. Remove them from one of the two repositories",
        named.join("; "),
        first.claimant
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LABEL_OWNER_NAME, LABEL_OWNER_NAMESPACE, reason};
    use crate::error::StageError;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_object_labelled_for_another_git_repository_is_claimed_elsewhere() {
        let ours = ("team-b", "second");
        let theirs = labels(&[
            (LABEL_OWNER_NAME, "first"),
            (LABEL_OWNER_NAMESPACE, "team-a"),
        ]);
        assert_eq!(
            other_owner(Some(&theirs), ours),
            Some(("team-a".into(), "first".into()))
        );
        // The same name in another namespace is another GitRepository.
        let same_name = labels(&[
            (LABEL_OWNER_NAME, "second"),
            (LABEL_OWNER_NAMESPACE, "team-a"),
        ]);
        assert!(other_owner(Some(&same_name), ours).is_some());
        // A half-labelled object still names someone else.
        let half = labels(&[(LABEL_OWNER_NAME, "first")]);
        assert_eq!(
            other_owner(Some(&half), ours),
            Some((String::new(), "first".into()))
        );
    }

    #[test]
    fn an_object_of_ours_or_of_nobody_is_not_claimed_elsewhere() {
        let ours = ("team-b", "second");
        let mine = labels(&[
            (LABEL_OWNER_NAME, "second"),
            (LABEL_OWNER_NAMESPACE, "team-b"),
            ("app", "web"),
        ]);
        assert_eq!(other_owner(Some(&mine), ours), None);
        assert_eq!(other_owner(Some(&labels(&[("app", "web")])), ours), None);
        assert_eq!(other_owner(None, ours), None);
    }

    #[test]
    fn a_conflict_names_both_git_repositories_and_the_object() {
        let conflict = |i: usize| Conflict {
            object: format!("ConfigMap shared/cm{i}"),
            claimant: "team-b/second".into(),
            owner: "team-a/first".into(),
        };
        let err = ApplyError::OwnershipConflict {
            conflicts: vec![conflict(0)],
        };
        assert_eq!(err.category(), "ownership_conflict");
        assert_eq!(err.reason(), reason::OWNERSHIP_CONFLICT);
        assert_eq!(
            err.to_string(),
            "ConfigMap shared/cm0 belongs to GitRepository team-a/first: GitRepository \
             team-b/second does not take over objects another GitRepository applied; nothing of \
             this revision was applied. Remove them from one of the two repositories"
        );
        let many = ApplyError::OwnershipConflict {
            conflicts: (0..8).map(conflict).collect(),
        };
        let text = many.to_string();
        assert!(
            text.contains("cm4 belongs") && !text.contains("cm5"),
            "{text}"
        );
        assert!(text.contains("(and 3 more)"), "{text}");
    }
}
