use thiserror::Error;

use hostlb_model::reason::{Reason, Warning};

#[derive(Debug, Error)]
pub enum Error {
    #[error("{action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("the watches of {watches} did not list their objects within {waited:?}")]
    WatchesNotSynced { watches: String, waited: std::time::Duration },
    #[error("the pods of Deployment {deployment} were still there {waited:?} after it was scaled to zero")]
    NotStopped { deployment: String, waited: std::time::Duration },
}

/// Why a request of a term of leadership was not sent, or was dropped in flight: the term is
/// over. It reaches the caller as the source of a `kube::Error::Service`.
#[derive(Debug, Error)]
#[error("this replica's term of leadership is over")]
pub struct TermOver;

impl Error {
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source: Box::new(source) }
    }

    /// The Warning for the user when the API server refused a write as invalid or forbidden
    /// (a 4xx other than a conflict or throttling, which pass by themselves); its message
    /// names the field.
    pub fn as_warning(&self) -> Option<Warning> {
        let Error::Kube { action, source } = self else { return None };
        let kube::Error::Api(status) = source.as_ref() else { return None };
        let lasting = (400..500).contains(&status.code) && !matches!(status.code, 404 | 409 | 429);
        lasting.then(|| {
            Warning::new(Reason::ApplyRefused, format!("{action}: the API server refused it: {}", status.message))
        })
    }

    /// Short, stable name of the failure for the metrics label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(_) => "api_rejected",
                kube::Error::Service(cause) if cause.is::<TermOver>() => "term_over",
                _ => "api_unreachable",
            },
            Error::WatchesNotSynced { .. } => "watches_not_synced",
            Error::NotStopped { .. } => "not_stopped",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
