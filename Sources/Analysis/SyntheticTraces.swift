/// Made-up but structured syscall traces, reproducible from a seed, for the
/// tests and the bench (real data sets are recorded with `alcub3 run
/// --record-traces`). Each program is a graph of short blocks of calls (an
/// open-read-close, a poll loop); a trace walks the graph, with a little noise
/// (a call swapped for another of the program's, a block from elsewhere) so
/// that normal traces held out from training show some sequences never seen in
/// training, as real ones do. An attack is a normal trace with a short burst
/// spliced in: calls of the program in an order it never uses, or calls it never makes.
public struct SyntheticTraces: Sendable {
    struct Program: Sendable {
        var blocks: [[UInt16]]
        var next: [[(block: Int, weight: Double)]]
        var vocabulary: [UInt16]
    }

    var programs: [Program] = []
    var random: SplitMix64

    /// Calls common to every program, and the rarer ones only attacks use.
    static let common: [UInt16] = [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 16, 17, 20, 21, 32, 39, 59, 61, 72, 78, 79,
                                   89, 97, 102, 158, 202, 217, 218, 228, 231, 257, 262, 273, 302, 318, 334]
    static let attackOnly: [UInt16] = [41, 42, 33, 101, 105, 106, 56, 57, 310, 311, 165, 90, 92, 319]

    public init(seed: UInt64, programs count: Int = 6) {
        random = SplitMix64(seed: seed)
        for _ in 0..<count {
            let vocabulary = Array(Self.common.shuffled(using: &random).prefix(random.int(in: 18...30)))
            let blocks = (0..<random.int(in: 12...24)).map { _ in
                (0..<random.int(in: 2...8)).map { _ in vocabulary[random.int(in: 0...(vocabulary.count - 1))] }
            }
            let next = blocks.indices.map { _ in
                (0..<random.int(in: 1...4)).map { _ in (block: random.int(in: 0...(blocks.count - 1)), weight: random.unit() + 0.05) }
            }
            programs.append(Program(blocks: blocks, next: next, vocabulary: vocabulary))
        }
    }

    /// A normal trace of one of the programs, of about `length` calls.
    public mutating func normal(length: Int = 600, program: Int? = nil) -> [UInt16] {
        let program = programs[program ?? random.int(in: 0...(programs.count - 1))]
        var trace: [UInt16] = []
        trace.reserveCapacity(length + 8)
        var block = 0
        while trace.count < length {
            if random.unit() < 0.01 {
                // A block of another program: shared libraries, an unusual path.
                let other = programs[random.int(in: 0...(programs.count - 1))]
                trace += other.blocks[random.int(in: 0...(other.blocks.count - 1))]
            }
            for call in program.blocks[block] {
                trace.append(random.unit() < 0.005 ? program.vocabulary[random.int(in: 0...(program.vocabulary.count - 1))] : call)
            }
            block = pick(program.next[block])
        }
        return trace
    }

    /// A normal trace with a burst of `burst` calls spliced in at a random place.
    public mutating func attack(length: Int = 600, burst: Int = 24) -> [UInt16] {
        var trace = normal(length: length)
        let program = programs[random.int(in: 0...(programs.count - 1))]
        // Half novel order of known calls (a shell's dup2-execve dance), half calls never made.
        let injected: [UInt16] = (0..<burst).map { _ in
            random.unit() < 0.5 ? program.vocabulary[random.int(in: 0...(program.vocabulary.count - 1))]
                : Self.attackOnly[random.int(in: 0...(Self.attackOnly.count - 1))]
        }
        let at = random.int(in: 0...trace.count)
        trace.insert(contentsOf: injected, at: at)
        return trace
    }

    private mutating func pick(_ choices: [(block: Int, weight: Double)]) -> Int {
        var target = random.unit() * choices.reduce(0) { $0 + $1.weight }
        for choice in choices {
            target -= choice.weight
            if target <= 0 { return choice.block }
        }
        return choices[choices.count - 1].block
    }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64), so a
/// seed gives the same traces on every machine.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
    mutating func int(in range: ClosedRange<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
}
