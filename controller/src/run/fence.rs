//! The fence of a term of leadership: every request of a term (its reconciles, its orphan sweep
//! and its Events) goes through a client that sends nothing once the term is over and drops
//! the requests in flight when it ends. A term is over once the elector publishes another term
//! or none, once this replica's clock passes the term's end (even before the elector says so:
//! a process that was frozen wakes up past it), or once the fence is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use tokio::sync::watch;

use crate::decide::leadership::Term;
use crate::error::TermOver;
use crate::run::metrics::Metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One term's fence; its clones are the same fence.
#[derive(Clone)]
pub struct Fence {
    term: u64,
    leading: watch::Receiver<Option<Term>>,
    closed: Arc<watch::Sender<bool>>,
}

impl Fence {
    /// The fence of `term`, which holds while `leading` carries that term and its end has not come.
    pub fn new(term: Term, leading: watch::Receiver<Option<Term>>) -> Self {
        Fence { term: term.number, leading, closed: Arc::new(watch::Sender::new(false)) }
    }

    /// Ends the term for its requests, whether or not this replica still leads.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn is_over(&self) -> bool {
        *self.closed.borrow() || self.end().is_none_or(|until| tokio::time::Instant::now().into_std() >= until)
    }

    /// The end of the term as last published; `None` once another term or none is.
    fn end(&self) -> Option<std::time::Instant> {
        self.leading.borrow().filter(|term| term.number == self.term).map(|term| term.until)
    }

    /// Returns when the term is over.
    pub async fn over(&self) {
        let (mut leading, mut closed) = (self.leading.clone(), self.closed.subscribe());
        loop {
            leading.mark_unchanged();
            closed.mark_unchanged();
            let Some(until) = self.end() else { return };
            if self.is_over() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => return,
                published = leading.changed() => if published.is_err() { return },
                _ = closed.changed() => {}
            }
        }
    }

    /// `client` behind this fence, counting the writes it lets through in `metrics`.
    pub fn client(&self, client: &Client, metrics: Arc<Metrics>) -> Client {
        let fenced = Fenced { client: client.clone(), fence: self.clone(), metrics };
        Client::new(fenced, client.default_namespace())
    }
}

struct Fenced {
    client: Client,
    fence: Fence,
    metrics: Arc<Metrics>,
}

impl tower_service::Service<Request<Body>> for Fenced {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (client, fence, metrics) = (self.client.clone(), self.fence.clone(), self.metrics.clone());
        Box::pin(async move {
            if fence.is_over() {
                return Err(TermOver.into());
            }
            metrics.request_sent(request.method());
            // Dropping the request's future cancels it.
            tokio::select! {
                biased;
                () = fence.over() => Err(TermOver.into()),
                response = client.send(request) => response.map_err(Into::into),
            }
        })
    }
}
