import Foundation

/// How well scores separate attack traces from normal ones.
///
/// An alert is a score strictly above the threshold. "Detection at a false-alarm
/// rate f" is the share of attacks alerted with the lowest threshold that
/// alerts on at most f of the normal traces; "false alarms at 90 % detection"
/// is the share of normal traces alerted by the highest threshold that still
/// alerts on 90 % of the attacks (normal traces tied with that attack count).
public struct DetectionMetrics: Sendable, Equatable {
    public static let falseAlarmRates = [0.01, 0.05, 0.10, 0.20]
    public static let detectionTarget = 0.90

    /// ROC AUC: the chance that an attack scores above a normal trace, ties counted half.
    public let auc: Double
    /// Keyed by `falseAlarmRates`.
    public let detectionAtFalseAlarm: [Double: Double]
    public let falseAlarmAtDetection: Double
    public let normalTraces: Int
    public let attackTraces: Int

    public init(normal: [Double], attack: [Double]) {
        precondition(!normal.isEmpty && !attack.isEmpty, "metrics need normal and attack scores")
        auc = Self.auc(normal: normal, attack: attack)
        var detection: [Double: Double] = [:]
        for rate in Self.falseAlarmRates { detection[rate] = Self.detectionRate(atFalseAlarm: rate, normal: normal, attack: attack) }
        detectionAtFalseAlarm = detection
        falseAlarmAtDetection = Self.falseAlarmRate(atDetection: Self.detectionTarget, normal: normal, attack: attack)
        normalTraces = normal.count
        attackTraces = attack.count
    }

    /// Mann-Whitney U over both sorted lists: O((n + m) log(n + m)).
    public static func auc(normal: [Double], attack: [Double]) -> Double {
        let normal = normal.sorted(), attack = attack.sorted()
        var wins = 0.0
        var below = 0   // normal scores < the current attack score
        var upTo = 0    // normal scores <= it
        for score in attack {
            while below < normal.count, normal[below] < score { below += 1 }
            upTo = max(upTo, below)
            while upTo < normal.count, normal[upTo] <= score { upTo += 1 }
            wins += Double(below) + Double(upTo - below) / 2
        }
        return wins / (Double(normal.count) * Double(attack.count))
    }

    public static func detectionRate(atFalseAlarm rate: Double, normal: [Double], attack: [Double]) -> Double {
        let threshold = threshold(atFalseAlarm: rate, normal: normal)
        return Double(attack.filter { $0 > threshold }.count) / Double(attack.count)
    }

    /// The lowest threshold (one of the normal scores, or -infinity) with at most
    /// `rate` of the normal scores above it.
    public static func threshold(atFalseAlarm rate: Double, normal: [Double]) -> Double {
        let descending = normal.sorted(by: >)
        // Up to `allowed` normal scores may pass: the threshold is the next one down.
        let allowed = Int((rate * Double(normal.count) + 1e-9).rounded(.down))
        return allowed < descending.count ? descending[allowed] : -.infinity
    }

    public static func falseAlarmRate(atDetection target: Double, normal: [Double], attack: [Double]) -> Double {
        let descending = attack.sorted(by: >)
        let needed = max(1, Int((target * Double(attack.count) - 1e-9).rounded(.up)))
        let lowest = descending[needed - 1]
        return Double(normal.filter { $0 >= lowest }.count) / Double(normal.count)
    }

    /// "0.01", "0.05", "0.10", "0.20": the keys of the JSON form.
    public static func key(_ rate: Double) -> String { String(format: "%.2f", rate) }

    /// The JSON object of `evaluate-behavior`: auc, detection_at_false_alarm, false_alarm_at_detection_0.90.
    public var jsonObject: [String: Any] {
        var detection: [String: Any] = [:]
        for (rate, value) in detectionAtFalseAlarm { detection[Self.key(rate)] = value }
        return ["auc": auc, "detection_at_false_alarm": detection,
                "false_alarm_at_detection_\(Self.key(Self.detectionTarget))": falseAlarmAtDetection]
    }
}
