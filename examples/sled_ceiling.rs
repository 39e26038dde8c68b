//! Bare ceiling for `scripts/bench`: sled inserting the bulk-write workload's 1-KB documents in
//! batches of 100 with a flush per batch, in a fresh temporary directory. Prints one JSON line:
//! `{"docs":N,"batch":B,"seconds":S,"docs_per_sec":R}`.
//! Usage: `sled_ceiling [DOCS] [BATCH]` (defaults 20000 and 100).

use std::time::Instant;

/// The same ~1 KB document body `scripts/bench` writes (`bulk-NNNNNN`).
fn doc(i: usize) -> (String, Vec<u8>) {
    let id = format!("bulk-{i:06}");
    let head = format!(r#"{{"_id":"{id}","type":"bench","n":{i},"pad":""#);
    let pad = "x".repeat(1024 - head.len() - 2);
    (id, format!("{head}{pad}\"}}").into_bytes())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let docs: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let batch: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100)
        .max(1);
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let tree = db.open_tree("bench")?;
    let started = Instant::now();
    let mut i = 0;
    while i < docs {
        let mut b = sled::Batch::default();
        for j in i..(i + batch).min(docs) {
            let (id, body) = doc(j);
            b.insert(id.as_bytes(), body);
        }
        tree.apply_batch(b)?;
        db.flush()?;
        i += batch;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        r#"{{"docs":{docs},"batch":{batch},"seconds":{secs:.3},"docs_per_sec":{:.0}}}"#,
        docs as f64 / secs
    );
    Ok(())
}
