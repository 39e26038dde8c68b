//! The embedded store's cache bound (`cache_mb`) holds while a scan reads every page once:
//! sled 0.34.7 as published keeps such pages in memory until 64 accesses have queued on each
//! of its 256 cache shards, so a compaction scan of a large database kept everything it read;
//! the vendored copy (vendor/sled/PATCHED.md) has 8 shards. Its own test binary, so no other
//! test allocates in the process while it measures.
#![cfg(target_os = "linux")]

/// This process's resident size in bytes.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

#[test]
fn a_scan_does_not_keep_the_pages_it_read() {
    const DOCS: usize = 60_000;
    const CACHE: u64 = 1 << 20;
    let dir = tempfile::tempdir().expect("temporary directory");
    let open = || {
        sled::Config::new()
            .path(dir.path())
            .cache_capacity(CACHE)
            .open()
            .expect("opening sled")
    };
    {
        let db = open();
        let tree = db.open_tree("t").expect("tree");
        let value = vec![b'x'; 1000];
        for chunk in 0..DOCS / 1000 {
            let mut batch = sled::Batch::default();
            for i in 0..1000 {
                batch.insert(
                    format!("d{:08}", chunk * 1000 + i).as_bytes(),
                    value.clone(),
                );
            }
            tree.apply_batch(batch).expect("writing");
        }
        db.flush().expect("flushing");
    }
    // reopened: nothing of the tree is in memory; the scan reads ~60 MB of leaves once each
    let db = open();
    let tree = db.open_tree("t").expect("tree");
    let before = resident();
    let mut read = 0usize;
    for row in tree.iter() {
        let (_, v) = row.expect("reading");
        read += v.len();
    }
    let grown = resident().saturating_sub(before);
    assert_eq!(read, DOCS * 1000);
    // measured: unpatched 36 MB larger, patched under 1 MB
    assert!(
        grown < 16 << 20,
        "a scan of {} MB with a {} MiB cache left the process {} MB larger",
        read >> 20,
        CACHE >> 20,
        grown >> 20
    );
}
