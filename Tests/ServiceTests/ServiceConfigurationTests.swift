import Foundation
import Policy
import Testing
@testable import Service

@Suite struct ServiceConfigurationTests {
    @Test func shippedDefaults() throws {
        let c = try ServiceSettings.from(.shipped)
        #expect(c.socketPath == "/run/alcub3/alcub3.sock" || ProcessInfo.processInfo.environment["ALCUB3_SOCKET"] != nil)
        #expect(c.retentionMaxAgeSeconds.map { Int($0.rounded()) } == 604_800)
        #expect(c.retentionMaxBytes == 1_000_000_000)
        #expect(c.allowedGroup == nil)
    }

    @Test func theServiceSectionOfAConfigurationFile() throws {
        let overrides = try PolicyOverrides.parse("""
            service:
              socket_group: "root"
              metrics_address: "127.0.0.1:9999"
              retention: {max_age: "1h", max_size: "10Mi"}
            """, source: "test.yaml")
        let c = try ServiceSettings.from(try PolicyConfiguration.shipped.merging(overrides))
        #expect(c.allowedGroup == 0)
        #expect(c.metricsAddress == "127.0.0.1:9999" || ProcessInfo.processInfo.environment["ALCUB3_METRICS"] != nil)
        #expect(c.retentionMaxAgeSeconds.map { Int($0.rounded()) } == 3600)
        #expect(c.retentionMaxBytes == 10 << 20)
    }

    @Test func anUnknownSocketGroupIsRefused() throws {
        let overrides = try PolicyOverrides.parse("service:\n  socket_group: \"no-such-group-alcub3\"\n", source: "test.yaml")
        #expect(throws: ServiceFailure.self) { try ServiceSettings.from(try PolicyConfiguration.shipped.merging(overrides)) }
    }

    @Test func requestsAndMessagesRoundTrip() throws {
        var request = ServiceRequest(op: .create)
        request.agentID = "a"
        request.command = ["sh", "-c", "true"]
        let decoded = try JSONDecoder().decode(ServiceRequest.self, from: JSONEncoder().encode(request))
        #expect(decoded.op == .create && decoded.agentID == "a" && decoded.command == ["sh", "-c", "true"])
        let error = ServiceMessage.error(72, "no such sandbox")
        let back = try JSONDecoder().decode(ServiceMessage.self, from: JSONEncoder().encode(error))
        #expect(back.type == .error && back.code == 72 && back.message == "no such sandbox")
    }
}
