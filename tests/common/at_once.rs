//! Many tasks started together, for tests of concurrent callers.

/// Runs `n` tasks made by `task` at once: each is spawned, and all start together
/// behind a barrier. Their outputs, in order; a task that panicked fails the test.
pub async fn at_once<F, Fut, T>(n: usize, task: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, run) = (barrier.clone(), task());
            tokio::spawn(async move {
                barrier.wait().await;
                run.await
            })
        })
        .collect();
    let mut outputs = Vec::with_capacity(n);
    for handle in handles {
        outputs.push(handle.await.expect("a task panicked"));
    }
    outputs
}
