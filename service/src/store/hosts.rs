//! Where the store is: one database URL, or, for PostgreSQL, several hosts in libpq's form,
//! `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`. usersvc uses one host at
//! a time (with `read-write` or `primary`, the one that takes writes: `pg_is_in_recovery()` is
//! false) and looks for it again when the one it used stops answering: after a standby is
//! promoted, writes go to the new primary.

use super::StoreError;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The hosts of one database URL, each with its (lazy) pool, and the one in use.
#[derive(Debug)]
pub(super) struct Hosts {
    urls: Vec<String>,
    pools: Vec<AnyPool>,
    current: AtomicUsize,
    /// Only a host that takes writes will do (`target_session_attrs` read-write or primary).
    writable: bool,
}

/// `url` as one URL per host, and whether a host must take writes. A URL of one host is itself.
pub(super) fn split(url: &str) -> Result<(Vec<String>, bool), StoreError> {
    let bad = || StoreError::BadUrl(toolkit_core::redact::url(url));
    let Some((scheme @ ("postgres" | "postgresql"), rest)) = url.split_once("://") else {
        // SQLite: one file, one "host".
        return Ok((vec![url.to_owned()], false));
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut writable = false;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", v)) => {
                writable = match v {
                    "read-write" | "primary" => true,
                    "any" => false,
                    _ => return Err(bad()),
                }
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let hosts: Vec<&str> = hostlist.split(',').collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(bad());
    }
    let urls = hosts
        .iter()
        .map(|h| format!("{scheme}://{userinfo}{h}{path}{query}"))
        .collect();
    Ok((urls, writable))
}

impl Hosts {
    pub(super) fn new(url: &str, max: u32, timeout: Duration) -> Result<Self, StoreError> {
        let (urls, writable) = split(url)?;
        let pools = urls
            .iter()
            .map(|u| {
                AnyPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(timeout)
                    .connect_lazy(u)
                    .map_err(StoreError::Connect)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            urls,
            pools,
            current: AtomicUsize::new(0),
            writable,
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Acquire)]
    }

    pub(super) fn pool(&self) -> &AnyPool {
        &self.pools[self.current.load(Ordering::Acquire)]
    }

    pub(super) fn several(&self) -> bool {
        self.urls.len() > 1
    }

    /// Whether `conn` is a host usersvc may use: any host, or one that takes writes.
    pub(super) async fn suits(&self, conn: &mut AnyConnection) -> Result<bool, StoreError> {
        if !self.writable {
            return Ok(true);
        }
        let row = sqlx::query("SELECT CAST(pg_is_in_recovery() AS integer)")
            .fetch_one(conn)
            .await?;
        Ok(row.try_get::<i32, _>(0)? == 0)
    }

    /// Looks at every host in order for one that answers within `timeout` and suits; uses the
    /// first found. False when none does (the one in use stays).
    pub(super) async fn find(&self, timeout: Duration) -> bool {
        for (i, url) in self.urls.iter().enumerate() {
            let attempt = async {
                let mut conn = AnyConnection::connect(url).await?;
                let suits = self.suits(&mut conn).await;
                let _ = conn.close().await;
                suits
            };
            if let Ok(Ok(true)) = tokio::time::timeout(timeout, attempt).await {
                let before = self.current.swap(i, Ordering::AcqRel);
                if before != i {
                    tracing::warn!(
                        host = %toolkit_core::redact::url(url),
                        "store: now using this host (the one before stopped answering, or no longer takes writes)"
                    );
                }
                return true;
            }
        }
        false
    }

    pub(super) async fn close(&self) {
        for p in &self.pools {
            p.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn libpq_multi_host_urls_split_into_one_url_per_host() {
        let (urls, writable) = split(
            "postgres://u:pw@h1:5432,h2:5433,[::1]:5434/db?sslmode=disable&target_session_attrs=read-write",
        )
        .expect("valid");
        assert_eq!(
            urls,
            [
                "postgres://u:pw@h1:5432/db?sslmode=disable",
                "postgres://u:pw@h2:5433/db?sslmode=disable",
                "postgres://u:pw@[::1]:5434/db?sslmode=disable",
            ]
        );
        assert!(writable);
        let (urls, writable) = split("postgres://h1/db").expect("valid");
        assert_eq!(
            (urls, writable),
            (vec!["postgres://h1/db".to_owned()], false)
        );
        let sqlite = "sqlite:///var/lib/usersvc/u.db?mode=rwc";
        assert_eq!(split(sqlite).expect("one file").0, [sqlite]);
        assert!(split("postgres://h1,,h2/db").is_err());
        let e = split("postgres://u:secret@h1,h2/db?target_session_attrs=standby")
            .expect_err("usersvc writes");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
