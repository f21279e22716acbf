//! What sled alone costs for applying one put: a `get` of the key's record
//! and an `insert` of the new one, as the state machine does for every put
//! (`src/store/state_machine/apply.rs`), over a key space written once,
//! with a given cache. The README's scale section quotes it, to tell what
//! sled's cache costs at a million keys from the rest of a node's work.
//!
//! One thread and no flushes (the node flushes sled only at a purge), so
//! the wall time it prints is CPU time.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A key's record as the state machine stores it: a 256 B value with its
/// revisions and version.
const RECORD_BYTES: usize = 270;

#[derive(Debug, Parser)]
#[command(about = "sled's cost of applying one put: a get and an insert of the key's record")]
struct Args {
    /// Keys written once before the measurement, and drawn from by it.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// sled's cache, as a node's `--cache-mb` (its default: 64).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// Puts measured, after half as many to warm the cache.
    #[arg(long, default_value_t = 400_000)]
    puts: u64,
    /// Where the database goes; emptied first, removed at the end.
    #[arg(long, default_value = "bench/target/sled-apply")]
    dir: PathBuf,
}

/// Key `i` as the state machine files a benchmark key: a prefix byte and
/// 16 bytes.
fn key(i: u64) -> Vec<u8> {
    format!("kbench/{i:010}").into_bytes()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    let db = sled::Config::new()
        .path(&args.dir)
        .cache_capacity(args.cache_mb << 20)
        .flush_every_ms(None)
        .open()?;
    let tree = db.open_tree("state")?;
    let record = vec![b'x'; RECORD_BYTES];
    for i in 0..args.keys {
        tree.insert(key(i), record.as_slice())?;
    }
    let mut rng = StdRng::seed_from_u64(1);
    let mut apply = |puts: u64| -> anyhow::Result<f64> {
        let started = Instant::now();
        for _ in 0..puts {
            let key = key(rng.random_range(0..args.keys));
            std::hint::black_box(tree.get(&key)?);
            tree.insert(key, record.as_slice())?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / puts.max(1) as f64)
    };
    apply(args.puts / 2)?;
    let micros = apply(args.puts)?;
    println!(
        "{} keys, {} MiB cache: {micros:.2} µs per put (a get and an insert)",
        args.keys, args.cache_mb
    );
    drop(db);
    std::fs::remove_dir_all(&args.dir)?;
    Ok(())
}
