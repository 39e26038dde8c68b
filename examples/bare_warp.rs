//! Bare ceiling for `scripts/bench`: a warp filter served the way syncgate serves its ports
//! (multi-threaded tokio, hyper HTTP/1 per connection, TCP_NODELAY) that answers every GET and
//! PUT with the same fixed 200-byte JSON. Prints `bare_warp listening on http://ADDR`, then
//! serves until killed. Usage: `bare_warp [ADDR]` (default `127.0.0.1:0`).

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use warp::Filter;

/// 200 bytes of JSON, shaped like a small document reply.
fn body() -> String {
    let head = r#"{"_id":"bench-doc","_rev":"1-0123456789abcdef0123456789abcdef","pad":""#;
    let tail = "\"}";
    let pad = "x".repeat(200 - head.len() - tail.len());
    format!("{head}{pad}{tail}")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let body: &'static str = Box::leak(body().into_boxed_str());
    assert_eq!(body.len(), 200);
    let reply = move || {
        warp::http::Response::builder()
            .header("content-type", "application/json")
            .body(body)
    };
    let get = warp::get().map(reply);
    // read the request body like a real PUT handler would, then answer the same bytes
    let put = warp::put()
        .and(warp::body::bytes())
        .map(move |_b: bytes::Bytes| reply());
    let routes = get.or(put);

    let listener = TcpListener::bind(addr).await?;
    println!("bare_warp listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let warp_svc = warp::service(routes);
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let mut s = warp_svc;
            async move { tower_service::Service::call(&mut s, req).await }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
