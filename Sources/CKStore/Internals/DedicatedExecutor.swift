import Dispatch

/// A task executor on a dispatch queue of its own, outside Swift's cooperative pool (as wide as the
/// machine has cores). Work that must keep its pace while the pool is busy prefers it: a preemption
/// watcher polling every few seconds while a put hashes on every core, or a test's server answering while
/// other tests compute. `Task(executorPreference: DedicatedExecutor.shared) { … }` runs the task, its
/// child tasks and the default actors it calls here.
public final class DedicatedExecutor: TaskExecutor {
    /// One for the process: light, waiting work only (polls, small answers), never bulk computation.
    public static let shared = DedicatedExecutor(label: "ckstore.dedicated")

    private let queue: DispatchQueue

    public init(label: String) {
        queue = DispatchQueue(label: label, attributes: .concurrent)
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}
