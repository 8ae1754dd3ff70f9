import Foundation
import Testing
@testable import Analysis

/// Training, normal and attack traces from the synthetic generator, fixed by the seed.
struct SyntheticSet {
    let train: [[UInt16]]
    let normal: [[UInt16]]
    let attack: [[UInt16]]

    init(seed: UInt64, burst: Int = 8) {
        var generator = SyntheticTraces(seed: seed)
        var lengths = SplitMix64(seed: seed ^ 0x5eed)
        func length() -> Int { 200 + Int(lengths.next() % 1500) }
        train = (0..<150).map { _ in generator.normal(length: length()) }
        normal = (0..<200).map { _ in generator.normal(length: length()) }
        attack = (0..<60).map { _ in generator.attack(length: length(), burst: burst) }
    }

    func metrics(_ scorer: inout some TraceScorer) -> DetectionMetrics {
        for trace in train { scorer.train(sequence: trace) }
        return DetectionMetrics(normal: normal.map(scorer.score), attack: attack.map(scorer.score))
    }
}

@Suite struct SequenceModelTests {
    @Test func packedSequencesRoundTrip() {
        for calls: [UInt16] in [[0], [1023], [5, 0, 1023, 7, 8, 9], [3, 3]] {
            #expect(PackedSequence.calls(PackedSequence.key(calls)) == calls)
        }
        #expect(PackedSequence.key([0]) != PackedSequence.key([0, 0]))
    }

    @Test func aBurstRaisesEveryModelsScore() {
        var generator = SyntheticTraces(seed: 11)
        let train = (0..<100).map { _ in generator.normal(length: 800) }
        let clean = generator.normal(length: 800)
        var attacked = clean
        attacked.insert(contentsOf: [41, 33, 33, 59, 42, 101, 56, 59], at: 400)
        var models: [any TraceScorer] = [StideModel(window: 6), MarkovModel(order: 2), SequenceModel()]
        for index in models.indices {
            for trace in train { models[index].train(sequence: trace) }
            #expect(models[index].score(sequence: attacked) > models[index].score(sequence: clean), "\(models[index].name)")
        }
    }

    @Test func alcub3BeatsTheBaselinesOnGeneratedData() {
        let set = SyntheticSet(seed: 3)
        var stide = StideModel(window: 6), markov = MarkovModel(order: 2), alcub3 = SequenceModel()
        let baselines = [set.metrics(&stide), set.metrics(&markov)]
        let ours = set.metrics(&alcub3)
        // Every attack scores above the normal traces' mean, for every model.
        for scorer in [stide, markov, alcub3] as [any TraceScorer] {
            let normalMean = set.normal.map(scorer.score).reduce(0, +) / Double(set.normal.count)
            let attackMean = set.attack.map(scorer.score).reduce(0, +) / Double(set.attack.count)
            #expect(attackMean > normalMean, "\(scorer.name)")
        }
        for baseline in baselines {
            #expect(ours.auc > baseline.auc)
            #expect(ours.detectionAtFalseAlarm[0.05]! > baseline.detectionAtFalseAlarm[0.05]!)
        }
        #expect(ours.detectionAtFalseAlarm[0.05]! >= 0.9)
    }

    @Test func streamsScoreAsTheBatchDoesAndTrainAsItDoes() throws {
        var generator = SyntheticTraces(seed: 5)
        let traces = (0..<20).map { _ in generator.normal(length: 300) }
        var batch = SequenceModel()
        for trace in traces { batch.train(sequence: trace) }
        var live = SequenceModel()
        for trace in traces {
            var stream = SequenceModel.Stream()
            for call in trace { stream.train(next: call, into: &live) }
        }
        #expect(live.sequences == batch.sequences)
        let probe = generator.attack(length: 400)
        var stream = SequenceModel.Stream()
        let streamed = probe.map { stream.score(next: $0, in: live) }
        #expect(streamed == batch.surprisals(probe))
        #expect(stream.lastCalls == Array(probe.suffix(5)))
        // Witten-Bell leaves every call some probability: no infinite surprisal.
        #expect(streamed.allSatisfy { $0.isFinite && $0 >= 0 && $0 <= 64 })
    }

    @Test func explanationsNameTheRareSequence() {
        let loop: [UInt16] = [257, 0, 3, 202]
        var model = SequenceModel()
        for _ in 0..<50 { model.train(sequence: Array(Array(repeating: loop, count: 20).joined())) }
        let trace: [UInt16] = Array(Array(repeating: loop, count: 10).joined()) + [257, 0, 42] + Array(Array(repeating: loop, count: 10).joined())
        let rare = model.explain(sequence: trace, top: 3)
        let names: [UInt16: String] = [257: "openat", 0: "read", 3: "close", 202: "futex", 42: "connect"]
        #expect(rare.first?.describe { names[$0] ?? "?" } == "openat→read→connect")
        #expect(rare.first?.novel == true)
        var window = AnomalyWindow(explanations: 3)
        var stream = SequenceModel.Stream()
        for call in trace { window.observe(call, on: &stream, model: model) }
        let report = window.close()
        #expect(report.syscalls == UInt64(trace.count))
        #expect(report.rareSequences.first?.calls == [257, 0, 42])
        // A window keeps the peak evidence; a trace's score is it, length-corrected.
        #expect(SequenceModel.lengthCorrected(peak: report.score, calls: report.syscalls) == model.score(sequence: trace))
        #expect(window.syscalls == 0 && window.peak == 0)
    }
}

@Suite struct ProfileTests {
    func trainedModel() -> SequenceModel {
        var generator = SyntheticTraces(seed: 9)
        var model = SequenceModel.trainedAndCalibrated(on: (0..<40).map { _ in generator.normal(length: 300) })
        model.agentID = "agent-1"
        return model
    }

    @Test func aProfileRoundTripsThroughJSON() throws {
        let model = trainedModel()
        let path = NSTemporaryDirectory() + "alcub3-profile-" + UUID().uuidString + ".json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try model.save(to: path)
        let loaded = try SequenceModel.load(from: path, agentID: "agent-1")
        #expect(loaded.profileJSON() == model.profileJSON())
        #expect(loaded.calibration == model.calibration)
        let probe = SyntheticTraces(seed: 10).normalSample()
        #expect(loaded.surprisals(probe) == model.surprisals(probe))
        let calibration = try #require(loaded.calibration)
        #expect(calibration.threshold(for: .high) <= calibration.threshold(for: .medium))
        #expect(calibration.threshold(for: .medium) < calibration.threshold(for: .low))
        #expect(throws: ProfileError.otherAgent(path: path, found: "agent-1", expected: "agent-2")) {
            try SequenceModel.load(from: path, agentID: "agent-2")
        }
    }

    @Test func corruptedProfilesAreRefusedInOneLine() throws {
        let text = String(decoding: trainedModel().profileJSON(), as: UTF8.self)
        var object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        func decoded(_ object: [String: Any]) -> ProfileError? {
            let data = try! JSONSerialization.data(withJSONObject: object)
            do { _ = try SequenceModel.decode(data, path: "p.json"); return nil } catch { return error }
        }
        func refusal(_ data: Data) -> ProfileError? {
            do { _ = try SequenceModel.decode(data, path: "p.json"); return nil } catch { return error }
        }
        var errors: [ProfileError?] = []
        errors.append(refusal(Data(text.prefix(text.count / 2).utf8)))
        if case .notAProfile = errors.last! {} else { Issue.record("truncated: \(String(describing: errors.last!))") }
        errors.append(refusal(Data("[1, 2]".utf8)))
        object["version"] = 99
        errors.append(decoded(object))
        #expect(errors.last! == .unsupportedVersion(path: "p.json", found: 99))
        object["version"] = 1
        object["trained_syscalls"] = (object["trained_syscalls"] as! Int) + 1
        errors.append(decoded(object))
        if case .corrupt(_, let detail) = errors.last!, detail.contains("trained_syscalls") {} else { Issue.record("count: \(String(describing: errors.last!))") }
        object["trained_syscalls"] = (object["trained_syscalls"] as! Int) - 1
        var ngrams = object["ngrams"] as! [String: Any]
        var sequences = ngrams["sequences"] as! [String]
        sequences[0] = "1 2 2000"
        ngrams["sequences"] = sequences
        object["ngrams"] = ngrams
        errors.append(decoded(object))
        if case .corrupt(_, let detail) = errors.last!, detail.contains("1 2 2000") {} else { Issue.record("range: \(String(describing: errors.last!))") }
        object["format"] = "something-else"
        errors.append(decoded(object))
        for error in errors {
            let error = try #require(error)
            #expect(!error.description.contains("\n") && error.description.contains("p.json"), "\(error)")
        }
        #expect(throws: ProfileError.unreadable(path: "/nonexistent/p.json", reason: "no such file")) {
            try SequenceModel.load(from: "/nonexistent/p.json")
        }
    }
}

extension SyntheticTraces {
    func normalSample() -> [UInt16] {
        var copy = self
        return copy.normal(length: 500)
    }
}
