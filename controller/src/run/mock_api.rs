//! A mock API server for the executors' tests: each test plays the API server's side of the
//! conversation, request by request, asserting the method, URL and body hostlb sends. One-off
//! Events go out from a task of their own, so they may come between other requests: the mock
//! answers them when they come and keeps them for `expect_event`.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A request left unanswered: it stays in flight while this is kept.
pub type InFlight = tower_test::mock::SendResponse<Response<Body>>;

/// The API server's side of the conversation.
pub struct ApiServer {
    handle: Handle,
    /// Events that came while another request was expected, in the order they came.
    events: Vec<Value>,
}

/// One request as the API server saw it.
pub struct Seen {
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl ApiServer {
    /// Waits for the next request other than an Event, checks its method and path, and answers
    /// `status` with `reply`.
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, reply: Value) -> Seen {
        let (seen, respond) = self.hold(method, path).await;
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap()));
        respond.send_response(response.unwrap());
        seen
    }

    /// Waits for the next request other than an Event, checks its method and path, and leaves
    /// it unanswered.
    pub async fn hold(&mut self, method: &str, path: &str) -> (Seen, InFlight) {
        let (request, respond) = loop {
            let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request()).await;
            let (request, respond) = next
                .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
                .expect("the client is gone");
            if !is_event(&request) {
                break (request, respond);
            }
            let event = answer_event(request, respond).await;
            self.events.push(event);
        };
        assert_eq!(request.method().as_str(), method, "for {}", request.uri());
        let seen = Seen {
            path: request.uri().path().to_string(),
            query: request.uri().query().unwrap_or_default().to_string(),
            body: json_body(request.into_body()).await,
        };
        assert_eq!(seen.path, path, "expected {method} {path}");
        (seen, respond)
    }

    /// The Event with this reason, from those that came already or the next requests, which
    /// must be Events; returns it as created in `namespace`.
    pub async fn expect_event(&mut self, namespace: &str, reason: &str) -> Value {
        let event = match self.events.iter().position(|event| event["reason"] == reason) {
            Some(index) => self.events.remove(index),
            None => loop {
                let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request()).await;
                let (request, respond) =
                    next.unwrap_or_else(|_| panic!("no {reason} Event came")).expect("the client is gone");
                assert!(is_event(&request), "expected an Event, got {} {}", request.method(), request.uri());
                let event = answer_event(request, respond).await;
                if event["reason"] == reason {
                    break event;
                }
                self.events.push(event);
            },
        };
        assert_eq!(event["metadata"]["namespace"], namespace, "{event}");
        event
    }

    pub async fn expect_nothing_more(&mut self) {
        assert!(self.events.is_empty(), "unexpected Events: {:?}", self.events);
        let next = tokio::time::timeout(Duration::from_millis(50), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

fn is_event(request: &Request<Body>) -> bool {
    request.method() == http::Method::POST && request.uri().path().starts_with("/apis/events.k8s.io/v1/namespaces/")
}

/// Answers an Event's creation with the Event, and returns it with its namespace from the path.
async fn answer_event(request: Request<Body>, respond: tower_test::mock::SendResponse<Response<Body>>) -> Value {
    let namespace = request.uri().path().split('/').nth(5).unwrap_or_default().to_string();
    let mut event = json_body(request.into_body()).await;
    respond.send_response(Response::builder().body(Body::from(serde_json::to_vec(&event).unwrap())).unwrap());
    event["metadata"]["namespace"] = Value::String(namespace);
    event
}

async fn json_body(body: Body) -> Value {
    let bytes = body.collect_bytes().await.expect("a readable body");
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    }
}

/// A client whose every request goes to the returned mock API server.
pub fn mock_api() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle, events: Vec::new() })
}

pub fn rejected(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code })
}
