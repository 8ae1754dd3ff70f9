/// A syscall sequence of one to six calls packed exactly into a UInt64: 10 bits
/// per call (numbers are below 1024), the newest call in the low bits, the
/// length in the top 4 bits. Two keys are equal only for the same sequence, so
/// no collision can make an unseen sequence look seen; and a key is never 0,
/// which marks an empty slot of CountTable.
public enum PackedSequence {
    public static let maxLength = 6
    static let bitsPerCall: UInt64 = 10

    @inline(__always) static func mask(_ length: Int) -> UInt64 { (1 << (bitsPerCall * UInt64(length))) &- 1 }

    /// The key of the last `length` calls of `calls` (newest in the low bits).
    @inline(__always) static func key(_ calls: UInt64, length: Int) -> UInt64 {
        UInt64(length) << 60 | (calls & mask(length))
    }

    @inline(__always) static func length(_ key: UInt64) -> Int { Int(key >> 60) }

    /// `history` with `call` appended, keeping the last `keep` calls.
    @inline(__always) static func push(_ call: UInt16, onto history: UInt64, keep: Int) -> UInt64 {
        ((history << bitsPerCall) | UInt64(call)) & mask(keep)
    }

    /// The calls of a key, oldest first.
    public static func calls(_ key: UInt64) -> [UInt16] {
        let length = length(key)
        return (0..<length).map { UInt16(truncatingIfNeeded: (key >> (bitsPerCall * UInt64(length - 1 - $0))) & 1023) }
    }

    /// The key of up to six calls, oldest first.
    public static func key(_ calls: some Collection<UInt16>) -> UInt64 {
        precondition((1...maxLength).contains(calls.count) && calls.allSatisfy { Int($0) < syscallNumberLimit })
        return key(calls.reduce(0) { $0 << bitsPerCall | UInt64($1) }, length: calls.count)
    }
}

/// Counts of packed sequences in an open-addressing table (linear probing,
/// Fibonacci hashing), because scoring makes up to a dozen lookups per syscall
/// and Dictionary's seeded SipHash costs several times a multiply and a shift.
/// Each sequence also counts the calls that followed it and how many distinct
/// ones: the two figures Witten-Bell smoothing needs of a context.
struct CountTable: Sendable {
    private(set) var keys: [UInt64]
    private(set) var counts: [UInt32]
    private(set) var followers: [UInt32]
    private(set) var distinct: [UInt32]
    private(set) var occupied = 0
    private var shift: UInt64

    init(capacityBits: Int = 10) {
        let capacity = 1 << capacityBits
        keys = Array(repeating: 0, count: capacity)
        counts = Array(repeating: 0, count: capacity)
        followers = Array(repeating: 0, count: capacity)
        distinct = Array(repeating: 0, count: capacity)
        shift = UInt64(64 - capacityBits)
    }

    var capacity: Int { keys.count }

    @inline(__always) private func home(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The slot holding `key`, or nil.
    @inline(__always) func slot(of key: UInt64) -> Int? {
        keys.withUnsafeBufferPointer { keys in
            let mask = keys.count - 1
            var index = home(key)
            while true {
                let found = keys[index]
                if found == key { return index }
                if found == 0 { return nil }
                index = (index + 1) & mask
            }
        }
    }

    @inline(__always) func count(of key: UInt64) -> UInt32 {
        slot(of: key).map { counts[$0] } ?? 0
    }

    /// The slot of `key`, inserted with zero counts when absent.
    mutating func insert(_ key: UInt64) -> Int {
        precondition(key != 0)
        if let index = slot(of: key) { return index }
        if (occupied + 1) * 2 > keys.count { grow() }
        let mask = keys.count - 1
        var index = home(key)
        while keys[index] != 0 { index = (index + 1) & mask }
        keys[index] = key
        occupied += 1
        return index
    }

    mutating func add(count: UInt32, at index: Int) { counts[index] &+= count }
    mutating func add(follower count: UInt32, isNew: Bool, at index: Int) {
        followers[index] &+= count
        if isNew { distinct[index] &+= 1 }
    }

    /// Every occupied slot's key, sorted: the stored form is the same for the same counts.
    var sortedKeys: [UInt64] { keys.filter { $0 != 0 }.sorted() }

    private mutating func grow() {
        var bigger = CountTable(capacityBits: 64 - Int(shift) + 1)
        for index in keys.indices where keys[index] != 0 {
            let slot = bigger.insert(keys[index])
            bigger.counts[slot] = counts[index]
            bigger.followers[slot] = followers[index]
            bigger.distinct[slot] = distinct[index]
        }
        self = bigger
    }

    /// Bytes held by the arrays.
    var bytes: Int { keys.count * (8 + 4 + 4 + 4) }
}
