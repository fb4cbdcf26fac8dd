//! Where the compute runs: on a thread of rayon's global pool.
//!
//! Every parallel kernel (the packed decoding products, attention, gemm) hands its work to rayon's
//! global pool. Called from a thread outside the pool, each such call queues its work, wakes the
//! workers and puts the caller to sleep until they finish: a round trip through the kernel for
//! every product, about fifty per decoding step, while the caller's core idles. Called from a
//! worker, the caller takes part in the work and the other workers pick up the rest from its
//! queue. Measured with 2 threads, process wall paired with the main-thread version: 16 x 128
//! greedy decoding steps 0.90 (the 20M Qwen3 shape) and 0.95 (SmolLM2-135M); 20M LoRA steps 0.89.

/// Stack of a pool thread. The compute that moves there used to run on the main thread, whose
/// stack is usually 8 MiB (the backward pass walks the graph recursively, and dropping a graph
/// recurses as deep); rayon's default is 2 MiB. Only the pages used are ever touched.
const STACK_BYTES: usize = 16 << 20;

/// Runs `f` on a thread of the global pool and returns its result; the calling thread waits.
/// The pool is built on first use with the thread count rayon reads from `RAYON_NUM_THREADS`
/// (every core when unset) and a stack as large as a main thread's.
pub fn run_on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when the pool already exists (built by an earlier call or by the first parallel
    // call), in which case it is used as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(STACK_BYTES)
        .thread_name(|i| format!("edco-compute-{i}"))
        .build_global();
    rayon::scope(|_| f())
}

/// The machine the compute runs on, in words, for the records of timed work: the CPU's model
/// name, the pool's threads and the widest vector instructions the matrix products use, e.g.
/// "AMD EPYC, 2 threads, AVX-512". Times taken on machines that differ in any of these are not
/// comparable.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!(
        "{model}, {} threads{}",
        rayon::current_num_threads(),
        vector_instructions()
    )
}

fn vector_instructions() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ", AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return ", AVX2";
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_pool_thread_and_returns_the_result() {
        assert!(rayon::current_thread_index().is_none());
        let (index, sum) = run_on_pool(|| {
            let sum: u64 = (0..1000u64).map(|i| i * i).sum();
            (rayon::current_thread_index(), sum)
        });
        assert!(index.is_some(), "ran outside the pool");
        assert_eq!(sum, 332_833_500);
        // Nested use from inside the pool runs in place.
        assert_eq!(run_on_pool(|| run_on_pool(|| 7)), 7);
    }
}
