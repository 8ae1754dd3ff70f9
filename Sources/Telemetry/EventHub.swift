import Synchronization

/// One event stream, many consumers. Each subscriber has its own bounded buffer
/// (counted in events) and its own count of what it dropped when it fell behind;
/// a slow subscriber never slows the ring buffer consumer or another subscriber.
public final class EventHub: Sendable {
    private struct Subscriber {
        let continuation: AsyncStream<[TelemetryEvent]>.Continuation
        let subscription: EventSubscription
    }

    private let subscribers = Mutex<[Int: Subscriber]>([:])
    private let nextID = Atomic<Int>(0)
    private let observers = Mutex<[@Sendable ([TelemetryEvent]) -> Void]>([])

    /// `body` runs on the ring buffer consumer's thread with each batch, before
    /// any subscriber gets it: for work that must not wait for a subscriber's
    /// turn (escape findings). It must be quick, and must not block.
    public func observe(_ body: @escaping @Sendable ([TelemetryEvent]) -> Void) {
        observers.withLock { $0.append(body) }
    }

    public init() {}

    /// Subscribe before starting what you watch, so a fast process is not missed.
    public func subscribe(bufferedEvents: Int = 1 << 20) -> EventSubscription {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        // Batches are what the ring buffer consumer hands over; bound them by the
        // event count the caller asked for, assuming batches of at least 64.
        let batches = max(16, bufferedEvents / 64)
        let (stream, continuation) = AsyncStream<[TelemetryEvent]>.makeStream(bufferingPolicy: .bufferingOldest(batches))
        let subscription = EventSubscription(events: stream, hub: self, id: id)
        subscribers.withLock { $0[id] = Subscriber(continuation: continuation, subscription: subscription) }
        continuation.onTermination = { [weak self] _ in self?.remove(id) }
        return subscription
    }

    func remove(_ id: Int) {
        let removed = subscribers.withLock { $0.removeValue(forKey: id) }
        removed?.continuation.finish()
    }

    /// Called by the ring buffer consumer once per drain.
    func publish(_ batch: [TelemetryEvent]) {
        guard !batch.isEmpty else { return }
        for observer in observers.withLock({ $0 }) { observer(batch) }
        let current = subscribers.withLock { Array($0.values) }
        for subscriber in current {
            if case .dropped(let lost) = subscriber.continuation.yield(batch) {
                subscriber.subscription.recordDropped(lost.count)
            }
        }
    }

    /// Hands every subscriber an empty batch: a subscriber holding records back
    /// (a sandbox still being created) looks again without waiting for the next
    /// kernel record, which a quiet sandbox may never send.
    public func wake() {
        for subscriber in subscribers.withLock({ Array($0.values) }) { subscriber.continuation.yield([]) }
    }

    /// Ends every subscriber's stream (after the last events were published).
    func finishAll() {
        let all = subscribers.withLock { dict -> [Subscriber] in
            let values = Array(dict.values)
            dict.removeAll()
            return values
        }
        for subscriber in all { subscriber.continuation.finish() }
    }
}

public final class EventSubscription: Sendable {
    public let events: AsyncStream<[TelemetryEvent]>
    private let droppedCount = Atomic<Int>(0)
    private weak let hub: EventHub?
    private let id: Int

    init(events: AsyncStream<[TelemetryEvent]>, hub: EventHub, id: Int) {
        self.events = events
        self.hub = hub
        self.id = id
    }

    /// Events this subscriber lost because its buffer was full.
    public var dropped: Int { droppedCount.load(ordering: .relaxed) }

    func recordDropped(_ n: Int) { droppedCount.add(n, ordering: .relaxed) }

    public func cancel() { hub?.remove(id) }
}
