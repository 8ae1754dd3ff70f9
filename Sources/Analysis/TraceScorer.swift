import Foundation

/// A model of normal syscall sequences: trained on normal traces, it gives any
/// trace one number, higher meaning more anomalous. `alcub3 integrity
/// evaluate-behavior` compares the models through this protocol alone.
public protocol TraceScorer: Sendable {
    /// The name reports and the command use ("alcub3", "stide", "markov").
    var name: String { get }
    mutating func train(sequence: [UInt16])
    func score(sequence: [UInt16]) -> Double
}

extension TraceScorer {
    public mutating func train(traces: [SyscallTrace]) {
        for trace in traces { train(sequence: trace.syscalls) }
    }

    public func scores(_ traces: [SyscallTrace]) -> [Double] { traces.map { score(sequence: $0.syscalls) } }
}

/// STIDE (Forrest, Hofmeyr, Somayaji and Longstaff, 1996; Warrender et al., 1999):
/// the set of every window of `window` consecutive calls seen in training; a
/// trace's score is the fraction of its windows not in the set (the mismatch
/// rate, the normalised form used to compare traces of different lengths,
/// rather than the raw mismatch count or the locality frame count). The first
/// window - 1 calls of a trace make shorter windows, so a short trace is judged too.
public struct StideModel: TraceScorer {
    public let window: Int
    private var seen = CountTable()

    public init(window: Int = 6) {
        precondition((1...PackedSequence.maxLength).contains(window))
        self.window = window
    }

    public var name: String { "stide" }
    public var windows: Int { seen.occupied }

    public mutating func train(sequence: [UInt16]) {
        var history: UInt64 = 0
        for (position, call) in sequence.enumerated() {
            history = PackedSequence.push(call, onto: history, keep: window)
            _ = seen.insert(PackedSequence.key(history, length: min(position + 1, window)))
        }
    }

    public func score(sequence: [UInt16]) -> Double {
        guard !sequence.isEmpty else { return 0 }
        var history: UInt64 = 0
        var unseen = 0
        for (position, call) in sequence.enumerated() {
            history = PackedSequence.push(call, onto: history, keep: window)
            if seen.slot(of: PackedSequence.key(history, length: min(position + 1, window))) == nil { unseen += 1 }
        }
        return Double(unseen) / Double(sequence.count)
    }
}

/// An order-`order` Markov chain of syscall transitions: P(call | the previous
/// `order` calls) with add-one (Laplace) smoothing over the calls seen in
/// training plus one for every unseen call, and a shorter context for the
/// first calls of a trace. A trace's score is its mean negative log-likelihood
/// in bits per call (the usual length-normalised form).
public struct MarkovModel: TraceScorer {
    public let order: Int
    /// Transitions (context + call) and contexts; a length-1 key counts a trace's first call.
    private var table = CountTable()
    private var vocabulary = Set<UInt16>()
    private var starts = 0

    public init(order: Int = 2) {
        precondition((1...PackedSequence.maxLength - 1).contains(order))
        self.order = order
    }

    public var name: String { "markov" }

    public mutating func train(sequence: [UInt16]) {
        guard !sequence.isEmpty else { return }
        starts += 1
        var history: UInt64 = 0
        for (position, call) in sequence.enumerated() {
            let contextLength = min(position, order)
            vocabulary.insert(call)
            if contextLength > 0 {
                let context = table.insert(PackedSequence.key(history, length: contextLength))
                table.add(follower: 1, isNew: false, at: context)
            }
            history = PackedSequence.push(call, onto: history, keep: order + 1)
            table.add(count: 1, at: table.insert(PackedSequence.key(history, length: contextLength + 1)))
        }
    }

    public func score(sequence: [UInt16]) -> Double {
        guard !sequence.isEmpty else { return 0 }
        let symbols = Double(vocabulary.count + 1)
        var history: UInt64 = 0
        var bits = 0.0
        for (position, call) in sequence.enumerated() {
            let contextLength = min(position, order)
            let context = contextLength == 0 ? Double(starts)
                : Double(table.slot(of: PackedSequence.key(history, length: contextLength)).map { table.followers[$0] } ?? 0)
            history = PackedSequence.push(call, onto: history, keep: order + 1)
            let seen = Double(table.count(of: PackedSequence.key(history, length: contextLength + 1)))
            bits -= log2((seen + 1) / (context + symbols))
        }
        return bits / Double(sequence.count)
    }
}
