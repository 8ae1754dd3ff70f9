import Foundation

/// alcub3's model of an agent's normal syscall sequences (docs/detection.md).
///
/// A variable-order n-gram model (orders 1 to `order`, at most 6) with
/// Witten-Bell interpolated smoothing: the probability of a call after a
/// context mixes what followed that exact context in training with the
/// estimate from the context one call shorter, weighted by how many distinct
/// calls followed it. A context that always led to the same call makes any
/// other call very surprising; a context with many different followers, or a
/// rarely seen one, leans on the shorter contexts. So the surprisal of a call,
/// -log2 P, is graded where STIDE only says seen or unseen, and reaches back
/// six calls where an order-2 chain sees two.
///
/// An attack is usually a short stretch inside an otherwise normal process, and
/// a trace-wide mean dilutes it, while a fixed window either cuts a long attack
/// or lets a benign blip of two odd calls dominate. So a trace's score is the
/// evidence of its worst stretch: each call adds its surprisal beyond
/// `referenceBits` (a call rarer than 1 in 8 adds, an expected one takes
/// away), and the evidence held so far decays by `evidenceDecay` per call
/// (Page's CUSUM with forgetting, an EWMA chart of surprisal): a dense
/// stretch of rare calls scores high whatever its length, while a long thread
/// of a program in a mode never seen, with sparse novelty, cannot pile up
/// evidence without bound. The score is in bits.
///
/// Live use: one `Stream` per thread, `Stream.score(next:in:)` per syscall, and
/// an `AnomalyWindow` that keeps the highest evidence of any thread and the
/// rarest sequences for the reason.
public struct SequenceModel: TraceScorer {
    public static let formatVersion = 1
    public static let formatName = "alcub3-sequence-model"

    /// The agent the profile was learned for; the caller sets it, loading checks it.
    public var agentID: String?
    public let order: Int
    /// Surprisal per call (bits) that a normal stretch stays under; each call adds its excess to the evidence.
    public let referenceBits: Double
    /// What the evidence keeps of itself from one call to the next (0.95: about the last 20 calls count).
    public let evidenceDecay: Double
    public internal(set) var trainedSyscalls: UInt64 = 0
    public internal(set) var trainedSequences: UInt64 = 0
    /// Score thresholds for the sensitivities, when the model was calibrated.
    public var calibration: Calibration?

    var table = CountTable()
    /// The empty context: every call trained, and the distinct calls among them.
    var callTotal: UInt64 = 0
    var distinctCalls: UInt64 = 0

    public init(order: Int = 6, referenceBits: Double = 3, evidenceDecay: Double = 0.95) {
        precondition((1...PackedSequence.maxLength).contains(order), "order 1 to \(PackedSequence.maxLength)")
        precondition(referenceBits > 0 && referenceBits.isFinite, "reference above 0 bits")
        precondition(evidenceDecay > 0 && evidenceDecay <= 1, "decay in (0, 1]")
        self.order = order
        self.referenceBits = referenceBits
        self.evidenceDecay = evidenceDecay
    }

    public var name: String { "alcub3" }
    /// Distinct sequences (n-grams of every order) in the model.
    public var sequences: Int { table.occupied }
    public var memoryBytes: Int { table.bytes }

    // MARK: training

    public mutating func train(sequence: [UInt16]) {
        var stream = Stream()
        for call in sequence { stream.train(next: call, into: &self) }
        if !sequence.isEmpty { trainedSequences += 1 }
    }

    /// Counts `call` after the context `stream` holds: the n-grams ending at it,
    /// and their contexts' followers.
    fileprivate mutating func count(_ call: UInt16, after history: UInt64, available: Int) {
        precondition(Int(call) < syscallNumberLimit, "syscall number \(call) out of range")
        trainedSyscalls += 1
        callTotal += 1
        let unigram = table.insert(PackedSequence.key(UInt64(call), length: 1))
        if table.counts[unigram] == 0 { distinctCalls += 1 }
        table.add(count: 1, at: unigram)
        let longest = min(available, order - 1)
        guard longest > 0 else { return }
        let extended = history << PackedSequence.bitsPerCall | UInt64(call)
        for length in 1...longest {
            let ngram = table.insert(PackedSequence.key(extended, length: length + 1))
            let isNew = table.counts[ngram] == 0
            table.add(count: 1, at: ngram)
            // Inserted after the n-gram: a table that grew would have moved the context's slot.
            let context = table.insert(PackedSequence.key(history, length: length))
            table.add(follower: 1, isNew: isNew, at: context)
        }
    }

    // MARK: scoring

    /// P(call | the last `available` calls of `history`), Witten-Bell interpolated
    /// from the empty context up to the longest context seen in training.
    @inline(__always) func probability(of call: UInt16, after history: UInt64, available: Int) -> Double {
        var p = 1.0 / Double(syscallNumberLimit)
        guard callTotal > 0 else { return p }
        let seen = Double(table.count(of: PackedSequence.key(UInt64(call), length: 1)))
        let calls = Double(distinctCalls)
        p = (seen + calls * p) / (Double(callTotal) + calls)
        let longest = min(available, order - 1)
        guard longest > 0 else { return p }
        let extended = history << PackedSequence.bitsPerCall | UInt64(call)
        for length in 1...longest {
            // A context never seen has no longer context seen either.
            guard let context = table.slot(of: PackedSequence.key(history, length: length)) else { break }
            let followers = Double(table.followers[context])
            guard followers > 0 else { break }
            let distinct = Double(table.distinct[context])
            let after = Double(table.count(of: PackedSequence.key(extended, length: length + 1)))
            p = (after + distinct * p) / (followers + distinct)
        }
        return p
    }

    /// The trace's score: the highest evidence any of its calls reached, per
    /// bit of the trace's length (`lengthCorrected`).
    public func score(sequence: [UInt16]) -> Double {
        var window = AnomalyWindow(explanations: 0)
        var stream = Stream()
        for call in sequence { window.observe(call, on: &stream, model: self) }
        return Self.lengthCorrected(peak: window.peak, calls: UInt64(sequence.count))
    }

    /// A long trace has more places for a stretch of rare calls to start than a
    /// short one, so its peak evidence is higher by chance alone (the maximum of
    /// a random walk over n steps grows like log n): the peak is divided by
    /// log2(n + 2). Without it, long normal threads with one new stretch (a new
    /// script, a new archive format) outranked short threads that were rare from
    /// end to end, such as an escape attempt's (docs/detection.md, "Score").
    @inline(__always)
    public static func lengthCorrected(peak: Double, calls: UInt64) -> Double {
        peak / Foundation.log2(Double(calls) + 2)
    }

    /// Surprisal of each call of `sequence`, in bits.
    public func surprisals(_ sequence: [UInt16]) -> [Double] {
        var stream = Stream()
        return sequence.map { stream.score(next: $0, in: self) }
    }

    /// The rarest sequences of `sequence` (one per distinct sequence, highest surprisal first).
    public func explain(sequence: [UInt16], top: Int = 5) -> [RareSequence] {
        var window = AnomalyWindow(explanations: top)
        var stream = Stream()
        for call in sequence { window.observe(call, on: &stream, model: self) }
        return window.rareSequences
    }

    /// The sequence to show for a surprising `call`: the shortest suffix never
    /// seen in training (the novelty itself), widened to three calls for context.
    func rareSequence(ending call: UInt16, after history: UInt64, available: Int, surprisal: Double) -> RareSequence {
        let extended = history << PackedSequence.bitsPerCall | UInt64(call)
        let longest = min(available, order - 1) + 1
        var novelLength = 0
        for length in 1...longest where table.slot(of: PackedSequence.key(extended, length: length)) == nil {
            novelLength = length
            break
        }
        let shown = max(novelLength, min(3, longest))
        return RareSequence(calls: PackedSequence.calls(PackedSequence.key(extended, length: shown)),
                            surprisal: surprisal, novel: novelLength > 0)
    }

    // MARK: per-thread streams

    /// The last calls of one thread, for scoring (or training) its next call
    /// in O(order) table lookups; a thread's stream lives as long as the thread.
    public struct Stream: Sendable {
        /// The last (up to 5) calls, 10 bits each, newest lowest.
        var history: UInt64 = 0
        var available = 0
        /// The evidence of the stretch ending at the last call (bits, never below 0).
        public private(set) var evidence: Double = 0
        public private(set) var calls: UInt64 = 0

        public init() {}

        /// The surprisal of `next` after this thread's last calls, in bits;
        /// the stream then moves on by one call.
        public mutating func score(next call: UInt16, in model: SequenceModel) -> Double {
            let bits = Int(call) < syscallNumberLimit
                ? -Foundation.log2(model.probability(of: call, after: history, available: available))
                : Foundation.log2(Double(syscallNumberLimit))
            evidence = max(0, model.evidenceDecay * evidence + bits - model.referenceBits)
            advance(call, model: model)
            return bits
        }

        /// Counts `next` into the model (a training stream).
        public mutating func train(next call: UInt16, into model: inout SequenceModel) {
            model.count(call, after: history, available: available)
            advance(call, model: model)
        }

        /// The last calls of the thread, oldest first (up to five).
        public var lastCalls: [UInt16] {
            available == 0 ? [] : PackedSequence.calls(PackedSequence.key(history, length: available))
        }

        @inline(__always) private mutating func advance(_ call: UInt16, model: SequenceModel) {
            let keep = PackedSequence.maxLength - 1
            history = PackedSequence.push(call & 1023, onto: history, keep: keep)
            available = min(available + 1, keep)
            calls += 1
        }
    }
}

/// A sequence that made a score: its calls (oldest first), how surprising its
/// last call was (bits, the highest seen), whether it never occurred in
/// training, and how often it came among the window's rarest calls.
public struct RareSequence: Codable, Sendable, Equatable {
    public var calls: [UInt16]
    public var surprisal: Double
    public var novel: Bool
    public var occurrences: Int = 1

    public init(calls: [UInt16], surprisal: Double, novel: Bool, occurrences: Int = 1) {
        self.calls = calls
        self.surprisal = surprisal
        self.novel = novel
        self.occurrences = occurrences
    }

    /// "openat→read→connect" with the caller's names (the Telemetry module has x86_64's).
    public func describe(names: (UInt16) -> String = { String($0) }) -> String {
        calls.map(names).joined(separator: "→")
    }
}

/// What a stretch of activity (an analysis window, or one trace) scored: the
/// highest evidence of any of its threads and the rarest sequences behind it.
/// Feed it every call as it arrives; closing it is reading a few fields.
public struct AnomalyWindow: Sendable {
    public let explanations: Int
    public private(set) var syscalls: UInt64 = 0
    public private(set) var surprisalSum: Double = 0
    /// The highest evidence (bits) any stream reached during the window.
    public private(set) var peak: Double = 0
    public private(set) var rareSequences: [RareSequence] = []

    public init(explanations: Int = 5) { self.explanations = explanations }

    /// Scores `call` on its thread's stream and takes it into the window; returns its surprisal.
    @discardableResult
    public mutating func observe(_ call: UInt16, on stream: inout SequenceModel.Stream, model: SequenceModel) -> Double {
        let history = stream.history, available = stream.available
        let bits = stream.score(next: call, in: model)
        syscalls += 1
        surprisalSum += bits
        if stream.evidence > peak { peak = stream.evidence }
        if explanations > 0, rareSequences.count < explanations || bits > rareSequences[rareSequences.count - 1].surprisal,
           Int(call) < syscallNumberLimit {
            keep(model.rareSequence(ending: call, after: history, available: available, surprisal: bits))
        }
        return bits
    }

    public var meanSurprisal: Double { syscalls == 0 ? 0 : surprisalSum / Double(syscalls) }

    /// The window's figures, and the window emptied for the next one.
    public mutating func close() -> WindowReport {
        let report = WindowReport(score: peak, meanSurprisal: meanSurprisal, syscalls: syscalls, rareSequences: rareSequences)
        self = AnomalyWindow(explanations: explanations)
        return report
    }

    private mutating func keep(_ sequence: RareSequence) {
        if let index = rareSequences.firstIndex(where: { $0.calls == sequence.calls }) {
            rareSequences[index].occurrences += 1
            guard sequence.surprisal > rareSequences[index].surprisal else { return }
            rareSequences[index].surprisal = sequence.surprisal
        } else {
            if rareSequences.count == explanations { rareSequences.removeLast() }
            rareSequences.append(sequence)
        }
        rareSequences.sort { $0.surprisal > $1.surprisal }
    }
}

/// A closed window: its peak evidence (bits, before the length correction a
/// trace's score gets), mean surprisal, size and reasons.
public struct WindowReport: Codable, Sendable, Equatable {
    public var score: Double
    public var meanSurprisal: Double
    public var syscalls: UInt64
    public var rareSequences: [RareSequence]
}
