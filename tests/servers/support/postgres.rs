//! A PostgreSQL server of the test's own.

use std::path::PathBuf;
use std::process::Command;

use deadpool_postgres::{Config, Pool, Runtime};
use tokio_postgres::NoTls;

use super::{chown_to, find_binary, free_port, is_root, run, scratch_dir};

const BIN_DIRS: &[&str] = &["/usr/lib/postgresql/*/bin"];

/// A running PostgreSQL with `pg_stat_statements` loaded (so tests can count the
/// queries a loader sent), stopped and deleted on drop.
pub struct Postgres {
    url: String,
    own: Option<Own>,
}

struct Own {
    dir: PathBuf,
    pg_ctl: PathBuf,
    as_root: bool,
    options: String,
}

impl Postgres {
    /// Starts a server on a free port, or uses `DATABASE_URL`.
    pub fn start() -> Postgres {
        match std::env::var("DATABASE_URL") {
            Ok(url) => Postgres { url, own: None },
            Err(_) => Postgres::start_own(),
        }
    }

    /// Starts a server of the test's own even when `DATABASE_URL` is set: fault
    /// tests stop it.
    pub fn start_own() -> Postgres {
        let initdb = find_binary("initdb", BIN_DIRS, "postgresql");
        let pg_ctl = find_binary("pg_ctl", BIN_DIRS, "postgresql");
        let dir = scratch_dir("pg");
        let as_root = is_root();
        if as_root {
            // initdb refuses to run as root: the server runs as `postgres`.
            chown_to("postgres", &dir);
        }
        let port = free_port();
        run(as_user(as_root, &initdb)
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]));
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off \
             -c shared_preload_libraries=pg_stat_statements -c max_connections=200",
            dir.display()
        );
        run(as_user(as_root, &pg_ctl)
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-o", &options, "start"]));
        Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            own: Some(Own {
                dir,
                pg_ctl,
                as_root,
                options,
            }),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool of up to `size` connections.
    pub fn pool(&self, size: usize) -> Pool {
        let mut config = Config::new();
        config.url = Some(self.url.clone());
        config.pool = Some(deadpool_postgres::PoolConfig::new(size));
        config
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .expect("create a pool")
    }

    /// A table `users(id bigint, name text)` with ids `1..=rows` and names `user {id}`,
    /// under a fresh schema-qualified name, and `pg_stat_statements` reset.
    pub async fn users_table(&self, pool: &Pool, rows: i64) -> String {
        let client = pool.get().await.expect("connect to postgres");
        let table = format!("users_{}", std::process::id());
        client
            .batch_execute(&format!(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
                 DROP TABLE IF EXISTS {table};
                 CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL);
                 INSERT INTO {table} SELECT i, 'user ' || i FROM generate_series(1, {rows}) i;
                 SELECT pg_stat_statements_reset();"
            ))
            .await
            .expect("create the users table");
        table
    }

    /// How many times statements containing `fragment` ran since the last reset.
    pub async fn calls(&self, pool: &Pool, fragment: &str) -> i64 {
        let client = pool.get().await.expect("connect to postgres");
        let row = client
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE query LIKE '%' || $1 || '%' AND query NOT LIKE '%pg_stat_statements%'",
                &[&fragment],
            )
            .await
            .expect("read pg_stat_statements");
        row.get(0)
    }

    /// Starts a stopped server again, on the same port and data.
    pub fn start_again(&mut self) {
        if let Some(own) = &self.own {
            run(as_user(own.as_root, &own.pg_ctl)
                .arg("-D")
                .arg(own.dir.join("data"))
                .arg("-l")
                .arg(own.dir.join("server.log"))
                .args(["-w", "-o", &own.options, "start"]));
        }
    }

    /// Stops the server now (for "database down" tests).
    pub fn stop(&mut self) {
        if let Some(own) = &self.own {
            run(as_user(own.as_root, &own.pg_ctl)
                .arg("-D")
                .arg(own.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(own) = self.own.take() {
            let _ = as_user(own.as_root, &own.pg_ctl)
                .arg("-D")
                .arg(own.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            let _ = std::fs::remove_dir_all(&own.dir);
        }
    }
}

fn as_user(as_root: bool, program: &std::path::Path) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}
