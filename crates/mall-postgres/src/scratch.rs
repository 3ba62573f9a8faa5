//! Scratch databases: a store that starts empty and is gone afterwards
//! (benchmarks, rehearsals, tests), on servers that hold other data too.

use crate::pg_message;
use mall_engine::StoreError;

/// A database of its own on each of the given servers, made empty (an
/// earlier one of the same name is dropped first) and dropped on drop.
/// With several servers the database on server `i` is `{name}_{i}`, so two
/// connection strings naming the same cluster still get two databases.
pub struct Scratch {
    /// The connection strings given, to drop the databases from.
    admin: Vec<String>,
    names: Vec<String>,
    urls: Vec<String>,
}

impl Scratch {
    pub fn create(urls: &[String], name: &str) -> Result<Scratch, StoreError> {
        check_name(name).map_err(StoreError::Backend)?;
        let names: Vec<String> = match urls.len() {
            1 => vec![name.to_string()],
            _ => (0..urls.len()).map(|i| format!("{name}_{i}")).collect(),
        };
        let mut scratch = Scratch {
            admin: Vec::new(),
            names: Vec::new(),
            urls: Vec::new(),
        };
        for (url, name) in urls.iter().zip(&names) {
            crate::off_runtime(|| recreate(url, name)).map_err(|e| {
                StoreError::Backend(format!("scratch database {name}: {}", pg_message(&e)))
            })?;
            // Pushed once made: a failure further on drops only these.
            scratch.admin.push(url.clone());
            scratch.names.push(name.clone());
            scratch.urls.push(with_dbname(url, name));
        }
        Ok(scratch)
    }

    /// Connection strings of the scratch databases, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (url, name) in self.admin.iter().zip(&self.names) {
            let dropped = crate::off_runtime(|| {
                postgres::Client::connect(url, postgres::NoTls).and_then(|mut c| {
                    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                })
            });
            if let Err(e) = dropped {
                tracing::warn!(database = %name, error = %pg_message(&e), "scratch database not dropped");
            }
        }
    }
}

/// A name that needs no quoting: lowercase letters, digits and `_`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() < 60
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "database name {name:?}: lowercase letters, digits and _ only"
        ))
    }
}

/// Drops database `name` if it exists and makes it anew, connected by `url`
/// (to any other database of the server).
pub(crate) fn recreate(url: &str, name: &str) -> Result<(), postgres::Error> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    // One statement each: neither may run in a transaction block.
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    client.batch_execute(&format!("CREATE DATABASE {name}"))
}

/// `url` naming database `db` instead of its own, in either form
/// `postgres::Config` parses.
pub(crate) fn with_dbname(url: &str, db: &str) -> String {
    let Some(scheme_end) = ["postgres://", "postgresql://"]
        .iter()
        .find(|s| url.starts_with(**s))
        .map(|s| s.len())
    else {
        // Keyword form: a later keyword wins over an earlier one.
        return format!("{url} dbname={db}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{db}{query}", &base[..authority_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_replaced_in_either_form() {
        assert_eq!(
            with_dbname(
                "postgres://mall:pw@10.0.0.5:5433/mall?connect_timeout=3",
                "x"
            ),
            "postgres://mall:pw@10.0.0.5:5433/x?connect_timeout=3"
        );
        assert_eq!(
            with_dbname("postgresql://mall@db", "x"),
            "postgresql://mall@db/x"
        );
        assert_eq!(
            with_dbname("host=db user=mall dbname=mall", "x"),
            "host=db user=mall dbname=mall dbname=x"
        );
        for url in [
            with_dbname("postgres://mall@db:5/mall", "x"),
            with_dbname("host=db port=5 user=mall dbname=mall", "x"),
        ] {
            let config: postgres::Config = url.parse().unwrap();
            assert_eq!(config.get_dbname(), Some("x"), "{url}");
        }
        assert!(check_name("mall_bench_1_hot").is_ok());
        assert!(check_name("Mall").is_err() && check_name("a;b").is_err());
    }
}
