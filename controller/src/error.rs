use thiserror::Error;

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
}

impl Error {
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source: Box::new(source) }
    }

    /// Short, stable name of the failure for the metrics label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(_) => "api_rejected",
                _ => "api_unreachable",
            },
            Error::WatchesNotSynced { .. } => "watches_not_synced",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
