//! Memory allocator settings for the CPU compute paths.
//!
//! A training step allocates and frees hundreds of activation-sized buffers (megabytes each).
//! glibc's malloc serves buffers above its mmap threshold with fresh mappings and hands them back
//! to the kernel when they are freed, and trims the heap's free top the same way, so every step
//! faults its activations in again page by page and the kernel zeroes each page: measured on
//! SmolLM2-135M LoRA steps, a fifth of the step went to page faults and page clearing. Keeping
//! the memory in the heap instead (no mmap for large blocks, no trimming) lets freed buffers be
//! reused as they are: 0.82x the step time, for about 7% more peak memory (the heap keeps what
//! it once held).
//!
//! The compute runs on the pool's threads (`threads`), so buffers are allocated on one thread and
//! freed on another; glibc's per-thread heaps would each keep their own high-water mark (a 20M
//! LoRA step's peak: 456 -> 746 MiB). One heap for every thread keeps the peak where it was when
//! the main thread made every allocation; the buffers are large and few, so its lock is cheap.

/// Applies the settings; called once at start-up, before the heavy allocations. Leaves glibc
/// alone when the user set malloc tunables of their own (`GLIBC_TUNABLES=glibc.malloc...`).
pub fn tune_for_compute() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc")) {
            return;
        }
        // SAFETY: mallopt only changes malloc's parameters; it is called before other threads
        // allocate (at start-up), and a rejected value leaves the default in place.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
