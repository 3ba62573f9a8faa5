//! `mall bench ledger`: durable double-entry transfers per second, the
//! ledger in-process (group-committed to SQLite, `synchronous=FULL`) side by
//! side with PostgreSQL doing the same transfer (two balance UPDATEs with a
//! non-negative check plus one INSERT, durable commits).

use crate::peers::{pg_connect, postgres_target, PeerError};
use mall_engine::verify_ledger;
use mall_inventory::sim::Rng;
use mall_ledger::{
    Account, AccountId, AccountKind, Command, LedgerConfig, Limits, Mode, Reply, Transfer,
    TransferId,
};
use mall_shard::{Clock, RuntimeConfig, Shard, SystemClock};
use mall_sqlite::ledger::LedgerJournal;
use mall_sqlite::Sync;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Config {
    pub wallets: u64,
    pub transfers: u64,
    /// Transfers per command (TigerBeetle batches up to 8,189).
    pub batch: usize,
    /// Commands in flight.
    pub in_flight: usize,
    /// PostgreSQL sessions.
    pub concurrency: usize,
    pub seconds_max: f64,
    pub postgres_url: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub system: &'static str,
    pub transfers: u64,
    pub per_s: f64,
    pub p99_ms: f64,
    pub verified: String,
}

const FUNDING: AccountId = AccountId(1);
const ESCROW: AccountId = AccountId(2);
const TOP_UP: u64 = 1_000_000_000;

fn wallet(i: u64) -> AccountId {
    AccountId(3 + i)
}

/// The i-th payment: a wallet pays 1 to 100 fen into escrow.
fn payment(i: u64, wallets: u64, rng: &mut Rng) -> Transfer {
    Transfer {
        id: TransferId(1_000_000_000 + i),
        debit: wallet(rng.below(wallets)),
        credit: ESCROW,
        amount: 1 + rng.below(100),
        mode: Mode::Single,
        linked: false,
        code: 10,
        user_data: i,
    }
}

/// Waits for every worker; any failure fails the run (its counts are unsure).
async fn join(
    tasks: Vec<tokio::task::JoinHandle<Result<hdrhistogram::Histogram<u64>, PeerError>>>,
) -> Result<hdrhistogram::Histogram<u64>, PeerError> {
    let mut hist = histogram();
    for t in tasks {
        let h = t.await.map_err(|e| PeerError::Setup(e.to_string()))??;
        let _ = hist.add(h);
    }
    Ok(hist)
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub async fn mall(config: &Config) -> Result<Row, PeerError> {
    let dir = std::env::temp_dir().join(format!(
        "mall-ledgerbench-{}-{}",
        std::process::id(),
        SystemClock.now().0
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ledger.db");
    let ledger_config = LedgerConfig {
        transfers_max: (config.transfers + config.wallets) as usize + 10,
        accounts_max: config.wallets as usize + 10,
    };
    let journal = LedgerJournal::open(&path, ledger_config, Sync::Full)
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let shard = Shard::start("ledger".into(), journal, clock, RuntimeConfig::default())
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let handle = shard.handle();
    // Accounts, and a top-up of every wallet (not timed).
    let wallet_limits = Limits {
        debits_must_not_exceed_credits: true,
        credits_must_not_exceed_debits: false,
    };
    let mut accounts = vec![
        Account::new(FUNDING, AccountKind::ChannelClearing, Limits::default()),
        Account::new(ESCROW, AccountKind::PlatformEscrow, Limits::default()),
    ];
    accounts.extend(
        (0..config.wallets).map(|i| Account::new(wallet(i), AccountKind::Wallet, wallet_limits)),
    );
    for chunk in accounts.chunks(8_000) {
        handle
            .submit(Command::CreateAccounts(chunk.to_vec()))
            .await
            .map_err(|e| PeerError::Setup(e.to_string()))?;
    }
    let top_ups: Vec<Transfer> = (0..config.wallets)
        .map(|i| Transfer {
            id: TransferId(1 + i),
            debit: FUNDING,
            credit: wallet(i),
            amount: TOP_UP,
            mode: Mode::Single,
            linked: false,
            code: 1,
            user_data: 0,
        })
        .collect();
    for chunk in top_ups.chunks(8_000) {
        handle
            .submit(Command::CreateTransfers(chunk.to_vec()))
            .await
            .map_err(|e| PeerError::Setup(e.to_string()))?;
    }
    // The timed part: payments in commands of `batch`, `in_flight` at a time.
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(config.seconds_max);
    let started = Instant::now();
    let tasks: Vec<_> = (0..config.in_flight)
        .map(|w| {
            let (handle, next, created, config) = (
                handle.clone(),
                next.clone(),
                created.clone(),
                config.clone(),
            );
            tokio::spawn(async move {
                let mut rng = Rng::new(0x1ed6e7 + w as u64);
                let mut hist = histogram();
                loop {
                    let start = next.fetch_add(config.batch, Ordering::Relaxed) as u64;
                    if start >= config.transfers || Instant::now() >= deadline {
                        break;
                    }
                    let end = (start + config.batch as u64).min(config.transfers);
                    let batch: Vec<Transfer> = (start..end)
                        .map(|i| payment(i, config.wallets, &mut rng))
                        .collect();
                    let at = Instant::now();
                    let reply = handle
                        .submit(Command::CreateTransfers(batch))
                        .await
                        .map_err(|e| PeerError::Setup(e.to_string()))?;
                    let _ = hist.record_n(at.elapsed().as_micros().max(1) as u64, end - start);
                    match reply {
                        Reply::Transfers(rs) => {
                            created.fetch_add(
                                rs.iter().filter(|r| r.is_ok()).count() as u64,
                                Ordering::Relaxed,
                            );
                        }
                        other => {
                            return Err(PeerError::Setup(format!("ledger answered {other:?}")))
                        }
                    }
                }
                Ok::<_, PeerError>(hist)
            })
        })
        .collect();
    let hist = join(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    drop(handle);
    tokio::task::spawn_blocking(move || shard.join())
        .await
        .map_err(|e| PeerError::Setup(e.to_string()))?;
    let created = created.load(Ordering::Relaxed);
    let (accounts, transfers) =
        mall_sqlite::ledger::read_ledger(&path).map_err(|e| PeerError::Setup(e.to_string()))?;
    let violations = verify_ledger(accounts, transfers);
    let stored = rusqlite_count(&path)?;
    let verified = if !violations.is_empty() {
        format!("FAILED: {}", violations[0])
    } else if stored != created + config.wallets {
        format!(
            "MISMATCH: {created} acknowledged, {} stored",
            stored - config.wallets
        )
    } else {
        "ok".into()
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Row {
        system: "mall ledger in-process",
        transfers: created,
        per_s: created as f64 / secs,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        verified,
    })
}

fn rusqlite_count(path: &std::path::Path) -> Result<u64, PeerError> {
    let (_, transfers) =
        mall_sqlite::ledger::read_ledger(path).map_err(|e| PeerError::Setup(e.to_string()))?;
    Ok(transfers.len() as u64)
}

pub async fn postgres(config: &Config) -> Result<Row, PeerError> {
    let (own, url) = postgres_target(config.postgres_url.as_deref())?;
    let connect = |url: String| async move { pg_connect(&url).await };
    let admin = connect(url.clone()).await?;
    let suffix = SystemClock.now().0 % 1_000_000_000;
    let (acc, tr) = (
        format!("ledger_accounts_{suffix}"),
        format!("ledger_transfers_{suffix}"),
    );
    admin
        .batch_execute(&format!(
            "CREATE TABLE {acc} (id bigint PRIMARY KEY, is_wallet boolean NOT NULL, debits_posted bigint NOT NULL DEFAULT 0, credits_posted bigint NOT NULL DEFAULT 0,
                CHECK (NOT is_wallet OR credits_posted - debits_posted >= 0));
             CREATE TABLE {tr} (id bigint PRIMARY KEY, debit bigint NOT NULL, credit bigint NOT NULL, amount bigint NOT NULL, code int NOT NULL, user_data bigint NOT NULL);
             INSERT INTO {acc} (id, is_wallet) VALUES ({}, false), ({}, false);
             INSERT INTO {acc} (id, is_wallet, credits_posted) SELECT 3 + g, true, {TOP_UP} FROM generate_series(0, {} - 1) g;
             UPDATE {acc} SET debits_posted = {TOP_UP}::bigint * {} WHERE id = {};",
            FUNDING.0, ESCROW.0, config.wallets, config.wallets, FUNDING.0
        ))
        .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(config.seconds_max);
    let started = Instant::now();
    let tasks: Vec<_> = (0..config.concurrency)
        .map(|w| {
            let (url, next, created, config, acc, tr) = (url.clone(), next.clone(), created.clone(), config.clone(), acc.clone(), tr.clone());
            tokio::spawn(async move {
                let mut client = connect(url).await?;
                let debit = client.prepare(&format!("UPDATE {acc} SET debits_posted = debits_posted + $2 WHERE id = $1 AND credits_posted - debits_posted >= $2")).await?;
                let credit = client.prepare(&format!("UPDATE {acc} SET credits_posted = credits_posted + $2 WHERE id = $1")).await?;
                let insert = client.prepare(&format!("INSERT INTO {tr} (id, debit, credit, amount, code, user_data) VALUES ($1, $2, $3, $4, $5, $6)")).await?;
                let mut rng = Rng::new(0x1ed6e7 + w as u64);
                let mut hist = histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if i >= config.transfers || Instant::now() >= deadline {
                        break;
                    }
                    let t = payment(i, config.wallets, &mut rng);
                    let at = Instant::now();
                    let tx = client.transaction().await?;
                    let amount = t.amount as i64;
                    if tx.execute(&debit, &[&(t.debit.0 as i64), &amount]).await? == 1 {
                        tx.execute(&credit, &[&(t.credit.0 as i64), &amount]).await?;
                        tx.execute(&insert, &[&(t.id.0 as i64), &(t.debit.0 as i64), &(t.credit.0 as i64), &amount, &i32::from(t.code), &(t.user_data as i64)]).await?;
                        tx.commit().await?;
                        created.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tx.rollback().await?;
                    }
                    let _ = hist.record(at.elapsed().as_micros().max(1) as u64);
                }
                Ok::<_, PeerError>(hist)
            })
        })
        .collect();
    let hist = join(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    let created = created.load(Ordering::Relaxed);
    let row = admin.query_one(&format!("SELECT sum(debits_posted)::text, sum(credits_posted)::text, (SELECT count(*) FROM {tr}) FROM {acc}"), &[]).await?;
    let (debits, credits, count): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
    let verified = if debits != credits {
        format!("UNBALANCED: debits {debits} credits {credits}")
    } else if count as u64 != created {
        format!("MISMATCH: {created} acknowledged, {count} stored")
    } else {
        "ok".into()
    };
    let _ = admin
        .batch_execute(&format!("DROP TABLE {acc}; DROP TABLE {tr};"))
        .await;
    drop(admin);
    drop(own);
    Ok(Row {
        system: "PostgreSQL",
        transfers: created,
        per_s: created as f64 / secs,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        verified,
    })
}

pub fn print(rows: &[Row]) {
    let base = rows.first().map_or(1.0, |r| r.per_s);
    println!(
        "{:<24} {:>10} {:>12} {:>9} {:>10}  verified",
        "system", "transfers", "transfers/s", "p99 ms", "mall is N×"
    );
    for r in rows {
        println!(
            "{:<24} {:>10} {:>12.0} {:>9.3} {:>10.1}  {}",
            r.system,
            r.transfers,
            r.per_s,
            r.p99_ms,
            base / r.per_s.max(1e-9),
            r.verified
        );
    }
}
