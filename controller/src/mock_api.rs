//! A mock API server for the executors' tests: each test plays the API server's side of the
//! conversation, request by request, asserting the method, URL and body hostlb sends.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The API server's side of the conversation.
pub struct ApiServer(Handle);

/// One request as the API server saw it.
pub struct Seen {
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl ApiServer {
    /// Waits for the next request, checks its method and path, and answers `status` with `reply`.
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, reply: Value) -> Seen {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await;
        let (request, respond) =
            next.unwrap_or_else(|_| panic!("no request came; expected {method} {path}")).expect("the client is gone");
        assert_eq!(request.method().as_str(), method, "for {}", request.uri());
        let seen = Seen {
            path: request.uri().path().to_string(),
            query: request.uri().query().unwrap_or_default().to_string(),
            body: json_body(request.into_body()).await,
        };
        assert_eq!(seen.path, path, "expected {method} {path}");
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap()));
        respond.send_response(response.unwrap());
        seen
    }

    /// Answers an Event's creation and returns the Event.
    pub async fn expect_event(&mut self, namespace: &str, reason: &str) -> Value {
        let path = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await;
        let (request, respond) = next.expect("an Event").expect("the client is gone");
        assert_eq!((request.method().as_str(), request.uri().path()), ("POST", path.as_str()));
        let event = json_body(request.into_body()).await;
        assert_eq!(event["reason"], reason, "{event}");
        respond.send_response(Response::builder().body(Body::from(serde_json::to_vec(&event).unwrap())).unwrap());
        event
    }

    pub async fn expect_nothing_more(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(50), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
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
    (Client::new(service, "default"), ApiServer(handle))
}

pub fn rejected(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code })
}
