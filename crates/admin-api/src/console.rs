//! The admin console: static files compiled into the binary, served at `/_console/` on the
//! admin port only (the public port answers 404 for every `/_…` path it does not know).
//!
//! The page is plain JavaScript modules; every action it takes is a call to the admin REST API
//! on the same origin. Its Content-Security-Policy allows only its own files and same-origin
//! requests: no inline script or style, no other origin, no framing.

use http::{HeaderValue, Method};
use syncgate_api_common::reply::bytes_reply;
use syncgate_api_common::{error_reply, Reply, Request};
use syncgate_core::Error;

/// The first path segment of the console.
pub const PREFIX: &str = "_console";

/// The console page's policy: its own files, same-origin API calls, nothing else.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Every other admin response: never a document that may run script or be framed (an HTML
/// attachment opened from the admin origin must not act with the console's powers).
pub const API_CSP: &str = "sandbox; default-src 'none'; frame-ancestors 'none'";

macro_rules! assets {
    ($($name:literal => $ct:literal),* $(,)?) => {
        /// (path below `/_console/`, content type, bytes).
        pub const ASSETS: &[(&str, &str, &[u8])] = &[
            $(($name, $ct, include_bytes!(concat!("../console/", $name)))),*
        ];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "ui.js" => "text/javascript; charset=utf-8",
    "json.js" => "text/javascript; charset=utf-8",
    "revtree.js" => "text/javascript; charset=utf-8",
    "prom.js" => "text/javascript; charset=utf-8",
    "chart.js" => "text/javascript; charset=utf-8",
    "views/databases.js" => "text/javascript; charset=utf-8",
    "views/users.js" => "text/javascript; charset=utf-8",
    "views/roles.js" => "text/javascript; charset=utf-8",
    "views/documents.js" => "text/javascript; charset=utf-8",
    "views/changes.js" => "text/javascript; charset=utf-8",
    "views/metrics.js" => "text/javascript; charset=utf-8",
}

/// `GET|HEAD /_console[/…]`.
pub fn serve(req: &Request) -> Reply {
    if !matches!(req.method, Method::GET | Method::HEAD) {
        return error_reply(&Error::MethodNotAllowed(
            "Only GET is allowed on the console".into(),
        ));
    }
    let path = match req.segments[1..].join("/") {
        p if p.is_empty() => "index.html".to_string(),
        p => p,
    };
    let Some((_, ct, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == path) else {
        return error_reply(&Error::not_found("No such console file"));
    };
    let mut r = bytes_reply(200, ct, bytes.to_vec());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONSOLE_CSP),
    );
    // small files, and a new binary must not run against cached old modules
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// Headers every admin response carries: no MIME sniffing, and a sandboxing policy unless the
/// response is a console file (which has its own).
pub fn harden(r: &mut Reply) {
    let h = r.headers_mut();
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(http::header::CONTENT_SECURITY_POLICY) {
        h.insert(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CSP),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    /// Every file under console/ is served, and nothing is listed that does not exist (the
    /// latter is also checked by `include_bytes!`).
    #[test]
    fn every_console_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    let rel = p.strip_prefix(&root).unwrap().to_string_lossy();
                    files.push(rel.replace('\\', "/"));
                }
            }
        }
        files.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|(n, _, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(files, listed);
    }
}
