import Foundation

/// How readily the behavioural analyzer alerts (docs/detection.md, "Sensitivity").
public enum Sensitivity: String, Codable, CaseIterable, Sendable {
    case low, medium, high
}

/// The score thresholds of a model, taken from scores of normal activity the
/// model did not learn from (held-out traces or windows): see `threshold(for:)`.
public struct Calibration: Codable, Sendable, Equatable {
    /// Held-out normal scores the figures come from.
    public var samples: Int
    public var p99: Double
    public var p999: Double
    public var max: Double

    public init(scores: [Double]) {
        precondition(!scores.isEmpty, "calibration needs scores")
        let sorted = scores.sorted()
        func quantile(_ q: Double) -> Double { sorted[Swift.min(sorted.count - 1, Int((q * Double(sorted.count)).rounded(.up)) - 1)] }
        samples = sorted.count
        p99 = quantile(0.99)
        p999 = quantile(0.999)
        max = sorted[sorted.count - 1]
    }

    /// high (the shipped configuration's): the highest held-out normal score,
    /// so no calibration sample alerts (the product's aim is no alert on
    /// ordinary work at the default); medium: a quarter above it; low: half
    /// above it. `p99` and `p999` are kept for `debug-behavior`.
    /// Never below `floor`: an agent whose held-out traces were perfectly
    /// predictable would otherwise alert on its first rare call.
    public func threshold(for sensitivity: Sensitivity) -> Double {
        switch sensitivity {
        case .high: Swift.max(max, Self.floor)
        case .medium: Swift.max(1.25 * max, 1.25 * Self.floor)
        case .low: Swift.max(1.5 * max, 1.5 * Self.floor)
        }
    }

    /// One bit of evidence per doubling of the trace's length.
    public static let floor = 1.0
}

extension SequenceModel {
    /// A model trained on every trace, calibrated on scores each trace got from a
    /// model trained without it (`folds`-fold cross-fitting): in-sample scores
    /// would be too low and the thresholds too eager.
    public static func trainedAndCalibrated(on traces: [[UInt16]], order: Int = 6, referenceBits: Double = 3,
                                            evidenceDecay: Double = 0.95, folds: Int = 5) -> SequenceModel {
        var model = SequenceModel(order: order, referenceBits: referenceBits, evidenceDecay: evidenceDecay)
        for trace in traces { model.train(sequence: trace) }
        let folds = min(folds, traces.count)
        guard folds >= 2 else { return model }
        var heldOut: [Double] = []
        for fold in 0..<folds {
            var partial = SequenceModel(order: order, referenceBits: referenceBits, evidenceDecay: evidenceDecay)
            for (index, trace) in traces.enumerated() where index % folds != fold { partial.train(sequence: trace) }
            for (index, trace) in traces.enumerated() where index % folds == fold { heldOut.append(partial.score(sequence: trace)) }
        }
        model.calibration = Calibration(scores: heldOut)
        return model
    }
}
