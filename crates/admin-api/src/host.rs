//! DNS-rebinding guard. The admin port has no authentication and trusts loopback; a web page
//! whose host name the attacker points at 127.0.0.1 could otherwise read and write it from a
//! browser on the same machine (the console's origin would be the attacker's). Browsers always
//! send the name they resolved in `Host`, so while the port is bound to loopback only loopback
//! names are answered: `localhost` (and `*.localhost`), loopback IP literals, and the bound
//! address itself. An admin port bound elsewhere has chosen its network exposure: no check.

use std::net::IpAddr;

use syncgate_core::config::parse_addr;
use syncgate_core::{Error, Server};

/// The refusal for a request whose `Host` is not a loopback name, if the port is on loopback.
pub fn check(server: &Server, host: Option<&str>) -> Result<(), Error> {
    let Ok(bound) = parse_addr(server.config.admin_interface()) else {
        return Ok(());
    };
    if !bound.ip().is_loopback() {
        return Ok(());
    }
    // HTTP/1.0 clients may send no Host; browsers always send one
    let Some(host) = host else { return Ok(()) };
    if is_loopback_name(host) {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "Host \"{}\" is not a loopback name: the admin port answers only requests addressed to \
         localhost or a loopback address",
        host.chars().take(100).collect::<String>()
    )))
}

/// Whether `host` (a `Host` header: a name or IP literal, with an optional port) is loopback.
fn is_loopback_name(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_name;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "localhost:4985",
            "LOCALHOST.:4985",
            "console.localhost:1",
            "127.0.0.1:4985",
            "127.9.9.9",
            "[::1]:4985",
            "[::1]",
        ] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in [
            "evil.example:4985",
            "localhost.evil.example",
            "10.0.0.1:4985",
            "[::2]:1",
            "[::1",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_name(bad), "{bad}");
        }
    }
}
