import CLibBPF
import Foundation
import KernelSupport

/// Namespace for the objects the BPFObjects plugin embeds (base64 of each `bpf/<name>.bpf.c`).
public enum BPFObjectBytes {
    public static func decoded(_ base64: String) -> [UInt8] {
        guard let data = Data(base64Encoded: base64, options: .ignoreUnknownCharacters) else {
            preconditionFailure("the embedded BPF object is not base64: the build is broken")
        }
        return [UInt8](data)
    }
}

/// A BPF program the kernel refused to load or attach, with libbpf's errno.
public struct BPFError: Error, CustomStringConvertible, Sendable {
    public let errno: Int32
    public let operation: String
    public let subject: String

    public init(errno: Int32, operation: String, subject: String) {
        self.errno = errno
        self.operation = operation
        self.subject = subject
    }

    public var description: String {
        SystemError(errno: errno, call: operation, context: subject).description
    }
}

/// An opened, loaded BPF object and the links of its attached programs. Closing
/// it (deinit) detaches everything: nothing outlives the owner unless pinned.
public final class BPFObject: @unchecked Sendable {
    // @unchecked: libbpf's object is only mutated before `load` and by
    // `attach`, both called under `lock`; map updates go to the kernel.
    private let object: OpaquePointer
    private var links: [String: OpaquePointer] = [:]
    private let lock = NSLock()
    private let bytes: [UInt8]  // bpf_object__open_mem keeps pointers into the image until close
    public let name: String

    /// libbpf < 1.0 compatibility modes return error codes encoded in pointers; strict mode does not.
    private static let strictMode: Void = { _ = libbpf_set_strict_mode(LIBBPF_STRICT_ALL) }()

    public init(name: String, image: [UInt8]) throws {
        _ = Self.strictMode
        self.name = name
        self.bytes = image
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size
        let object: OpaquePointer? = name.withCString { cName in
            opts.object_name = cName
            return image.withUnsafeBytes { bpf_object__open_mem($0.baseAddress, $0.count, &opts) }
        }
        guard let object else { throw BPFError(errno: errno, operation: "bpf_object__open_mem", subject: name) }
        self.object = object
    }

    deinit {
        for link in links.values { bpf_link__destroy(link) }
        bpf_object__close(object)
    }

    /// Writes a `const volatile` global in .rodata; only before `load`.
    public func setReadOnlyGlobal<T>(_ variable: String, to value: T) throws {
        guard let btf = bpf_object__btf(object),
              let map = bpf_object__find_map_by_name(object, ".rodata") else {
            throw BPFError(errno: ENOENT, operation: "find .rodata", subject: variable)
        }
        let sectionID = btf__find_by_name_kind(btf, ".rodata", 15 /* BTF_KIND_DATASEC */)
        guard sectionID > 0, let section = btf__type_by_id(btf, UInt32(sectionID)) else {
            throw BPFError(errno: ENOENT, operation: "find .rodata BTF", subject: variable)
        }
        var size = 0
        guard let data = bpf_map__initial_value(map, &size) else {
            throw BPFError(errno: ENOENT, operation: "bpf_map__initial_value", subject: ".rodata")
        }
        let infos = btf_var_secinfos(section)!
        for i in 0..<Int(btf_vlen(section)) {
            let info = infos[i]
            guard let variableType = btf__type_by_id(btf, info.type),
                  let cName = btf__name_by_offset(btf, variableType.pointee.name_off),
                  String(cString: cName) == variable else { continue }
            precondition(Int(info.size) == MemoryLayout<T>.size, "\(variable): size \(info.size) != \(MemoryLayout<T>.size)")
            precondition(Int(info.offset) + Int(info.size) <= size)
            var image = [UInt8](UnsafeRawBufferPointer(start: data, count: size))
            image.withUnsafeMutableBytes { $0.storeBytes(of: value, toByteOffset: Int(info.offset), as: T.self) }
            let rc = image.withUnsafeBytes { bpf_map__set_initial_value(map, $0.baseAddress, size) }
            if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_map__set_initial_value", subject: variable) }
            return
        }
        throw BPFError(errno: ENOENT, operation: "find global", subject: variable)
    }

    public func load() throws {
        try lock.withLock {
            let rc = bpf_object__load(object)
            if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_object__load", subject: name) }
        }
    }

    /// Each program's function name and ELF section (e.g. "raw_tp/sys_exit").
    public var programs: [(name: String, section: String)] {
        var result: [(String, String)] = []
        var program = bpf_object__next_program(object, nil)
        while let p = program {
            result.append((String(cString: bpf_program__name(p)), String(cString: bpf_program__section_name(p))))
            program = bpf_object__next_program(object, p)
        }
        return result
    }

    /// Attaches one program by its function name, as its SEC() says.
    public func attach(_ programName: String) throws {
        try lock.withLock {
            if links[programName] != nil { return }
            guard let program = bpf_object__find_program_by_name(object, programName) else {
                throw BPFError(errno: ENOENT, operation: "find program", subject: programName)
            }
            guard let link = bpf_program__attach(program) else {
                throw BPFError(errno: errno, operation: "bpf_program__attach", subject: programName)
            }
            links[programName] = link
        }
    }

    public func isAttached(_ programName: String) -> Bool { lock.withLock { links[programName] != nil } }

    /// Pins an attached program's link: it stays attached after this process ends.
    public func pinLink(_ programName: String, at path: String) throws {
        try lock.withLock {
            guard let link = links[programName] else {
                throw BPFError(errno: ENOENT, operation: "pin link", subject: programName)
            }
            let rc = bpf_link__pin(link, path)
            if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_link__pin", subject: path) }
        }
    }

    /// Attaches a cgroup program (cgroup/connect4 and the like) to one cgroup;
    /// the returned link detaches when released, unless pinned.
    public func attachCgroup(_ programName: String, cgroupFD: Int32) throws -> BPFLink {
        try lock.withLock {
            guard let program = bpf_object__find_program_by_name(object, programName) else {
                throw BPFError(errno: ENOENT, operation: "find program", subject: programName)
            }
            guard let link = bpf_program__attach_cgroup(program, cgroupFD) else {
                throw BPFError(errno: errno, operation: "bpf_program__attach_cgroup", subject: programName)
            }
            return BPFLink(link)
        }
    }

    /// A loaded program's fd, owned by the object (for bpf_link_update).
    public func programFD(_ programName: String) throws -> Int32 {
        guard let program = bpf_object__find_program_by_name(object, programName) else {
            throw BPFError(errno: ENOENT, operation: "find program", subject: programName)
        }
        let fd = bpf_program__fd(program)
        if fd < 0 { throw BPFError(errno: -fd, operation: "bpf_program__fd", subject: programName) }
        return fd
    }

    /// Makes the object use an existing map (for instance a pinned one) instead
    /// of creating its own; only before `load`.
    public func reuseMap(_ mapName: String, fd: Int32) throws {
        guard let map = bpf_object__find_map_by_name(object, mapName) else {
            throw BPFError(errno: ENOENT, operation: "find map", subject: mapName)
        }
        let rc = bpf_map__reuse_fd(map, fd)
        if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_map__reuse_fd", subject: mapName) }
    }

    public func pinMap(_ mapName: String, at path: String) throws {
        guard let map = bpf_object__find_map_by_name(object, mapName) else {
            throw BPFError(errno: ENOENT, operation: "find map", subject: mapName)
        }
        let rc = bpf_map__pin(map, path)
        if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_map__pin", subject: path) }
    }

    public func mapFD(_ mapName: String) throws -> Int32 {
        guard let map = bpf_object__find_map_by_name(object, mapName) else {
            throw BPFError(errno: ENOENT, operation: "find map", subject: mapName)
        }
        let fd = bpf_map__fd(map)
        if fd < 0 { throw BPFError(errno: -fd, operation: "bpf_map__fd", subject: mapName) }
        return fd
    }
}

/// One attachment of a program; detached when released, unless pinned.
public final class BPFLink: @unchecked Sendable {
    // @unchecked: the pointer is only handed to libbpf's link calls, which the kernel serializes.
    private let link: OpaquePointer

    init(_ link: OpaquePointer) { self.link = link }

    deinit { bpf_link__destroy(link) }

    public func pin(at path: String) throws {
        let rc = bpf_link__pin(link, path)
        if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_link__pin", subject: path) }
    }
}

/// Typed access to a map by fd.
public struct BPFMap: Sendable {
    public let fd: Int32
    public let name: String

    public init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
    }

    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(key: K, value: V) throws {
        var k = key, v = value
        let rc = withUnsafeMutablePointer(to: &k) { kp in
            withUnsafeMutablePointer(to: &v) { vp in bpf_map_update_elem(fd, kp, vp, UInt64(BPF_ANY)) }
        }
        if rc < 0 { throw BPFError(errno: -rc, operation: "bpf_map_update_elem", subject: name) }
    }

    public func delete<K: BitwiseCopyable>(key: K) {
        var k = key
        _ = withUnsafeMutablePointer(to: &k) { bpf_map_delete_elem(fd, $0) }
    }

    public func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(key: K, as: V.Type) -> V? {
        var k = key
        let value = UnsafeMutablePointer<V>.allocate(capacity: 1)
        defer { value.deallocate() }
        let rc = withUnsafeMutablePointer(to: &k) { bpf_map_lookup_elem(fd, $0, value) }
        return rc == 0 ? value.pointee : nil
    }

    /// Every key of a hash map (a snapshot; the kernel may change it meanwhile).
    public func keys<K: BinaryInteger & BitwiseCopyable>(_: K.Type) -> [K] {
        var result: [K] = []
        var next = K.zero
        var status = withUnsafeMutablePointer(to: &next) { bpf_map_get_next_key(fd, nil, $0) }
        while status == 0 {
            result.append(next)
            var previous = next
            status = withUnsafeMutablePointer(to: &previous) { pp in
                withUnsafeMutablePointer(to: &next) { np in bpf_map_get_next_key(fd, pp, np) }
            }
        }
        return result
    }

    /// Per-CPU array slot 0, one value per possible CPU.
    public func perCPUValues<V: BitwiseCopyable>(as type: V.Type) -> [V] {
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { return [] }
        let stride = (MemoryLayout<V>.size + 7) & ~7
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: stride * cpus, alignment: 8)
        defer { buffer.deallocate() }
        var key: UInt32 = 0
        guard bpf_map_lookup_elem(fd, &key, buffer) == 0 else { return [] }
        return (0..<cpus).map { buffer.loadUnaligned(fromByteOffset: $0 * stride, as: V.self) }
    }
}
