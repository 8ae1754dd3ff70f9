import CAlcub3
import CLibBPF
import Foundation
import Testing
@testable import Telemetry

/// The Swift view of each shared struct must match what clang laid out for
/// the BPF side, as recorded in the object's BTF (size and every member offset).
@Suite struct LayoutTests {
    struct Layout {
        let name: String
        let size: Int
        let offsets: [String: Int]
    }

    static func offsets<T>(_ type: T.Type, _ fields: [(String, PartialKeyPath<T>)]) -> Layout {
        Layout(name: "\(T.self)", size: MemoryLayout<T>.size,
               offsets: Dictionary(uniqueKeysWithValues: fields.map { ($0.0, MemoryLayout<T>.offset(of: $0.1)!) }))
    }

    static let swiftLayouts: [Layout] = [
        offsets(alcub3_header.self, [("ts_ns", \.ts_ns), ("sandbox_cgid", \.sandbox_cgid), ("pid", \.pid), ("tid", \.tid),
                                     ("kind", \.kind), ("flags", \.flags), ("uid", \.uid)]),
        offsets(alcub3_syscall_event.self, [("hdr", \.hdr), ("nr", \.nr), ("ret", \.ret), ("args", \.args)]),
        offsets(alcub3_syscall_entry.self, [("ts_delta", \.ts_delta), ("nr", \.nr), ("ret", \.ret), ("args", \.args)]),
        offsets(alcub3_syscall_batch.self, [("hdr", \.hdr), ("count", \.count), ("entries", \.entries)]),
        offsets(alcub3_fork_event.self, [("hdr", \.hdr), ("child_pid", \.child_pid), ("child_tid", \.child_tid), ("comm", \.comm)]),
        offsets(alcub3_exec_event.self, [("ppid", \.ppid), ("old_tid", \.old_tid), ("euid", \.euid), ("argv_len", \.argv_len),
                                         ("comm", \.comm), ("filename", \.filename), ("argv", \.argv)]),
        offsets(alcub3_exit_event.self, [("ppid", \.ppid), ("exit_code", \.exit_code), ("comm", \.comm)]),
        offsets(alcub3_namespace_event.self, [("nr", \.nr), ("fd", \.fd), ("ret", \.ret), ("flags", \.flags)]),
        offsets(alcub3_credentials_event.self, [("nr", \.nr), ("ret", \.ret), ("new_uid", \.new_uid), ("new_egid", \.new_egid),
                                                ("cap_effective", \.cap_effective), ("cap_permitted", \.cap_permitted)]),
        offsets(alcub3_network_event.self, [("op", \.op), ("fd", \.fd), ("ret", \.ret), ("family", \.family),
                                            ("sock_type", \.sock_type), ("protocol", \.protocol), ("port", \.port),
                                            ("local_port", \.local_port), ("addr", \.addr), ("local_addr", \.local_addr),
                                            ("unix_path", \.unix_path)]),
        offsets(alcub3_file_event.self, [("op", \.op), ("nr", \.nr), ("ret", \.ret), ("open_flags", \.open_flags),
                                         ("mode", \.mode), ("owner_uid", \.owner_uid), ("owner_gid", \.owner_gid),
                                         ("file_id", \.file_id), ("dir", \.dir), ("name", \.name), ("dir2", \.dir2),
                                         ("name2", \.name2)]),
        offsets(alcub3_write_stats.self, [("sandbox_cgid", \.sandbox_cgid), ("bytes", \.bytes), ("writes", \.writes),
                                          ("inode", \.inode), ("pid", \.pid)]),
        offsets(alcub3_counters.self, [("seen", \.seen), ("submitted", \.submitted), ("dropped", \.dropped),
                                       ("syscall_dropped", \.syscall_dropped)]),
        offsets(alcub3_sandbox_config.self, [("flags", \.flags)]),
    ]

    @Test func swiftLayoutsMatchTheObjectsBTF() throws {
        try Self.compare(Self.swiftLayouts, withTheBTFOf: BPFObjectBytes.decoded(BPFObjectBytes.telemetry))
    }

    /// Each layout against the struct of that name in the object's BTF.
    static func compare(_ layouts: [Layout], withTheBTFOf image: [UInt8]) throws {
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size
        let object = try #require(image.withUnsafeBytes { bpf_object__open_mem($0.baseAddress, $0.count, &opts) })
        defer { bpf_object__close(object) }
        let btf = try #require(bpf_object__btf(object))

        for layout in layouts {
            let id = btf__find_by_name_kind(btf, layout.name, 4 /* BTF_KIND_STRUCT */)
            try #require(id > 0, "struct \(layout.name) is not in the object's BTF")
            let type = try #require(btf__type_by_id(btf, UInt32(id)))
            #expect(Int(type.pointee.size) == layout.size, "\(layout.name): BTF size \(type.pointee.size), Swift \(layout.size)")
            let members = btf_members(type)!
            var btfOffsets: [String: Int] = [:]
            for i in 0..<Int(btf_vlen(type)) {
                let name = String(cString: btf__name_by_offset(btf, members[i].name_off))
                btfOffsets[name] = Int(btf_member_bit_offset(type, UInt32(i))) / 8
            }
            for (field, offset) in layout.offsets {
                #expect(btfOffsets[field] == offset, "\(layout.name).\(field): BTF \(String(describing: btfOffsets[field])), Swift \(offset)")
            }
        }
    }
}
