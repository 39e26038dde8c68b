//! The authenticator's Bearer hook: a verified token becomes a user (registered when the
//! provider allows it) whose `jwt_issuer`, `jwt_roles`, `jwt_channels` and email follow the
//! token. The pipeline then loads the user and refuses it if disabled.

use std::collections::BTreeSet;

use syncgate_storage::BoxFuture;

use super::{JwtAuth, JwtIdentity};
use crate::authenticator::BearerAuth;
use crate::principals::{self, Grants, Principals, UserRecord, GUEST};
use crate::AuthError;

fn rejected(reason: impl std::fmt::Display) -> AuthError {
    AuthError::Unauthorized {
        reason: format!("Invalid login: {reason}"),
        challenge: false,
    }
}

/// Keeps the grant sequences of entries that stay; new entries get 0 (= this write).
fn regrant(current: &Grants, wanted: &BTreeSet<String>) -> Grants {
    wanted
        .iter()
        .map(|c| (c.clone(), current.get(c).copied().unwrap_or(0)))
        .collect()
}

/// The email to store: the token's when it is a valid address, else the stored one.
fn email_for(id: &JwtIdentity, current: Option<&String>) -> Option<String> {
    match &id.email {
        Some(e) if principals::validate_email(e).is_ok() => Some(e.clone()),
        _ => current.cloned(),
    }
}

/// Whether the stored user already reflects this token (then nothing is written).
fn up_to_date(rec: &UserRecord, id: &JwtIdentity) -> bool {
    rec.jwt_issuer.as_deref() == Some(id.issuer.as_str())
        && rec.jwt_roles.keys().eq(id.roles.iter())
        && rec.jwt_channels.keys().eq(id.channels.iter())
        && rec.email == email_for(id, rec.email.as_ref())
}

/// Creates or updates the token's user. Unknown users without `register` are refused.
pub(crate) async fn apply(id: &JwtIdentity, principals: &Principals) -> Result<(), AuthError> {
    let name = id.username.as_str();
    if name == GUEST {
        return Err(rejected("a token cannot act as GUEST"));
    }
    if let Some(u) = principals.load(name).await? {
        if up_to_date(&u.record, id) {
            return Ok(());
        }
    } else if !id.register {
        return Err(rejected(
            "unknown user (this provider does not register new users)",
        ));
    } else {
        principals::validate_name(name).map_err(|e| rejected(format!("user name: {e}")))?;
    }
    let (written, ()) = principals
        .modify_user(name, |cur| {
            let mut rec = match cur {
                Some(c) => c.clone(),
                None if id.register => UserRecord::new(name),
                None => {
                    return Err(rejected(
                        "unknown user (this provider does not register new users)",
                    ))
                }
            };
            rec.jwt_issuer = Some(id.issuer.clone());
            rec.jwt_roles = regrant(&rec.jwt_roles, &id.roles);
            rec.jwt_channels = regrant(&rec.jwt_channels, &id.channels);
            rec.email = email_for(id, rec.email.as_ref());
            Ok(((cur != Some(&rec)).then_some(rec), ()))
        })
        .await?;
    if let Some((rec, ticket)) = written {
        tracing::debug!(user = %rec.name, provider = %id.provider, "user updated from token");
        principals.store().durable(ticket).await?;
    }
    Ok(())
}

/// Clears `jwt_issuer`, `jwt_roles` and `jwt_channels` of users whose issuer is no longer a
/// configured provider (SG checks this per request; providers only change with the config,
/// so once at startup is the same). Returns how many users were changed.
pub async fn revoke_stale_grants(
    principals: &Principals,
    jwt: Option<&JwtAuth>,
) -> Result<usize, AuthError> {
    let mut changed = 0;
    let mut last_ticket = None;
    for name in principals.user_names().await? {
        let Some(u) = principals.get_user(&name).await? else {
            continue;
        };
        let Some(iss) = &u.jwt_issuer else {
            continue;
        };
        if jwt.is_some_and(|j| j.has_issuer(iss)) {
            continue;
        }
        let (written, ()) = principals
            .modify_user(&name, |cur| {
                let rec = cur.filter(|c| c.jwt_issuer.is_some()).map(|c| {
                    let mut c = c.clone();
                    c.jwt_issuer = None;
                    c.jwt_roles.clear();
                    c.jwt_channels.clear();
                    c
                });
                Ok((rec, ()))
            })
            .await?;
        if let Some((_, t)) = written {
            changed += 1;
            last_ticket = Some(t);
        }
    }
    // make the writes durable (and visible to feeds) without blocking startup
    if let (Some(t), Ok(rt)) = (last_ticket, tokio::runtime::Handle::try_current()) {
        let store = principals.store().clone();
        rt.spawn(async move {
            if let Err(e) = store.durable(t).await {
                tracing::warn!(error = %e, "flushing revoked JWT grants failed");
            }
        });
    }
    if changed > 0 {
        tracing::info!(
            users = changed,
            "cleared JWT roles and channels of users whose issuer is no longer configured"
        );
    }
    Ok(changed)
}

impl BearerAuth for JwtAuth {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        principals: &'a Principals,
    ) -> BoxFuture<'a, Result<String, AuthError>> {
        Box::pin(async move {
            let id = self.verify(token).await.map_err(|e| {
                tracing::debug!(reason = %e, "Bearer token refused");
                rejected(e)
            })?;
            apply(&id, principals).await?;
            Ok(id.username.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncgate_storage::Store;

    fn principals() -> (tempfile::TempDir, Principals) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        (dir, Principals::new(db))
    }

    fn ident(name: &str, register: bool, roles: &[&str]) -> JwtIdentity {
        JwtIdentity {
            provider: "p".into(),
            issuer: "https://issuer.example".into(),
            username: name.into(),
            email: Some("a@b.example".into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            channels: ["c1".to_string()].into(),
            register,
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn register_update_and_refuse() {
        let (_d, p) = principals();
        // unknown without register
        let e = apply(&ident("u1", false, &[]), &p).await.unwrap_err();
        assert!(e.to_string().contains("unknown user"), "{e}");
        assert!(p.get_user("u1").await.unwrap().is_none());
        // registered with the token's grants and no password
        apply(&ident("u1", true, &["r1"]), &p).await.unwrap();
        let u = p.get_user("u1").await.unwrap().unwrap();
        assert_eq!(u.jwt_issuer.as_deref(), Some("https://issuer.example"));
        assert!(u.jwt_roles.contains_key("r1") && u.jwt_channels.contains_key("c1"));
        assert_eq!(u.email.as_deref(), Some("a@b.example"));
        assert!(u.password_hash.is_none());
        let seq = u.seq;
        // the same token again writes nothing
        apply(&ident("u1", true, &["r1"]), &p).await.unwrap();
        assert_eq!(p.get_user("u1").await.unwrap().unwrap().seq, seq);
        // new roles claim: updated, old JWT role gone; an existing user needs no register
        apply(&ident("u1", false, &["r2"]), &p).await.unwrap();
        let u = p.get_user("u1").await.unwrap().unwrap();
        assert!(u.seq > seq);
        assert_eq!(u.jwt_roles.keys().collect::<Vec<_>>(), ["r2"]);
        // never GUEST
        assert!(apply(&ident(GUEST, true, &[]), &p).await.is_err());
        // the provider stays configured: nothing is revoked; once it is gone, grants go
        let local: std::collections::BTreeMap<String, super::super::LocalJwtConfig> =
            serde_json::from_value(serde_json::json!({"p": {"issuer": "https://issuer.example",
                "client_id": "", "algorithms": ["HS256"], "hmac_secret": "s"}}))
            .unwrap();
        let jwt = JwtAuth::new(None, Some(&local)).unwrap().unwrap();
        assert_eq!(revoke_stale_grants(&p, Some(&jwt)).await.unwrap(), 0);
        assert_eq!(revoke_stale_grants(&p, None).await.unwrap(), 1);
        let u = p.get_user("u1").await.unwrap().unwrap();
        assert!(u.jwt_issuer.is_none() && u.jwt_roles.is_empty() && u.jwt_channels.is_empty());
        assert_eq!(revoke_stale_grants(&p, None).await.unwrap(), 0);
    }
}
