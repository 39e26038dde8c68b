//! Giving freed heap memory back to the operating system.
//!
//! glibc's allocator keeps memory a process has freed in its arenas for reuse and returns it
//! only from the top of each heap, so after bursts of writes (request bodies, sled's node
//! copies, write batches) a long-running server's resident size stays near its high-water mark
//! and grows with the data written, although the live heap is a fraction of it (measured: 196 MB
//! resident after 160,000 documents bulk-written, 65 MB once trimmed; 34 MB for the same data
//! right after a restart). A background thread calls `malloc_trim(0)` every few seconds, which
//! releases the free pages of every arena; it takes the arenas' locks briefly and costs
//! nothing when there is nothing to give back.

use std::time::Duration;

/// How often the free heap is returned. Measured while bulk-writing 160,000 documents (4 ×
/// 40,000, release build): every 2 s took the peak from ~205 to ~125 MB but seemed to cost a few
/// per cent of throughput (pages given back and faulted in again); every 10 s leaves the peak
/// (~200 MB) and the throughput as they were and brings an idle server back to 68–112 MB.
const INTERVAL: Duration = Duration::from_secs(10);

/// Starts the trimming thread (glibc on Linux only; other allocators return memory themselves).
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| loop {
                std::thread::sleep(INTERVAL);
                // SAFETY: malloc_trim only walks the allocator's own free lists; any argument
                // is valid
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = started {
            tracing::warn!("cannot start the memory trimming thread: {e}");
        }
    }
}
