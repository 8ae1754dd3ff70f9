import Analysis
import ArgumentParser
import Foundation
import Service
import KernelSupport

extension IntegrityCommand {
    /// `alcub3 integrity evaluate-behavior`: the behavioural model's quality as
    /// numbers, side by side with the STIDE and Markov baselines (docs/detection.md).
    struct EvaluateBehavior: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "evaluate-behavior",
            abstract: "Train a behaviour model on normal syscall traces and measure how it tells attack traces from normal ones.",
            discussion: "Each DIR holds trace files, one trace per file (nested folders too), of whitespace-separated syscall "
                + "numbers, as in the public system-call intrusion data sets and `run --record-traces`. Trains on --train only, "
                + "scores every trace of --normal and --attack with one number, and prints the ROC AUC, the detection rate at "
                + "1, 5, 10 and 20 % false alarms and the false-alarm rate at 90 % detection.")
        @Option(help: "Normal traces to learn from.") var train: String
        @Option(help: "Normal traces held out from training.") var normal: String
        @Option(help: "Attack traces.") var attack: String
        @Option(help: "alcub3, stide (window 6), markov (order 2) or all.") var model: ModelChoice = .alcub3
        @Option(help: "table or json.") var format: OutputFormat = .table
        @Option(name: .customLong("save-profile"),
                help: "Write alcub3's model, trained and calibrated on --train, as a profile (JSON, inside the working directory).")
        var saveProfile: String?
        @Option(name: .customLong("agent-id"), help: "The agent the saved profile is for.") var agentID: String?

        enum ModelChoice: String, ExpressibleByArgument, CaseIterable {
            case alcub3, stide, markov, all
        }

        func run() throws {
            let profilePath = try saveProfile.map(SafePath.inWorkingDirectory)
            let train = try Self.load(self.train, option: "--train")
            let normal = try Self.load(self.normal, option: "--normal")
            let attack = try Self.load(self.attack, option: "--attack")
            let names = model == .all ? ["alcub3", "stide", "markov"] : [model.rawValue]
            var results: [(name: String, metrics: DetectionMetrics)] = []
            for name in names {
                var scorer: any TraceScorer = switch name {
                case "stide": StideModel(window: 6)
                case "markov": MarkovModel(order: 2)
                default: SequenceModel()
                }
                scorer.train(traces: train)
                results.append((name, DetectionMetrics(normal: scorer.scores(normal), attack: scorer.scores(attack))))
            }
            var calibration: Calibration?
            if let profilePath {
                var profile = SequenceModel.trainedAndCalibrated(on: train.map(\.syscalls))
                profile.agentID = agentID
                calibration = profile.calibration
                do { try profile.save(to: profilePath) } catch { throw fail(Alcub3Exit.kernelRefused, error.description) }
            }
            if format == .json {
                var object = results[0].metrics.jsonObject
                if model == .all {
                    object["models"] = Dictionary(uniqueKeysWithValues: results.map { ($0.name, $0.metrics.jsonObject) })
                }
                Output.out(Self.json(object) + "\n")
                return
            }
            let rates = DetectionMetrics.falseAlarmRates
            Output.out("model     AUC    " + rates.map { "det@\(Int($0 * 100))%".padding(toLength: 8, withPad: " ", startingAt: 0) }.joined()
                       + "FA@90%det\n")
            for (name, metrics) in results {
                Output.out(name.padding(toLength: 10, withPad: " ", startingAt: 0) + String(format: "%.3f  ", metrics.auc)
                           + rates.map { String(format: "%-8.3f", metrics.detectionAtFalseAlarm[$0] ?? 0) }.joined()
                           + String(format: "%.3f\n", metrics.falseAlarmAtDetection))
            }
            let syscalls = train.reduce(0) { $0 + $1.syscalls.count }
            Output.out("trained on \(train.count) traces (\(syscalls) syscalls); scored \(normal.count) normal and \(attack.count) attack traces\n")
            if let calibration, let saveProfile {
                Output.out("profile written to \(saveProfile); score thresholds "
                           + Sensitivity.allCases.map { String(format: "%@ %.3f", $0.rawValue, calibration.threshold(for: $0)) }
                               .joined(separator: ", ") + "\n")
            }
        }

        /// The traces of a folder; a bad one is refused naming its file, line and token (exit 68, like other input files).
        static func load(_ directory: String, option: String) throws -> [SyscallTrace] {
            do {
                return try SyscallTrace.loadDirectory(directory)
            } catch {
                throw fail(Alcub3Exit.invalidPolicy, "\(option): \(error.description)")
            }
        }

        static func json(_ object: [String: Any]) -> String {
            guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return "{}" }
            return String(decoding: data, as: UTF8.self)
        }
    }
}
