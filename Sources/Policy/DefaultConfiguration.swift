/// The shipped configuration, config/sandbox_config.yaml, carried in the binary so
/// alcub3 needs no file beside it. A test fails when the two differ by a byte:
/// edit the YAML file, then paste it here.
public enum DefaultConfiguration {
    public static let yaml = #"""
    # alcub3 sandbox configuration: the shipped defaults (schema: docs/policy.md).
    #
    # alcub3 carries this same text inside its binary (Sources/Policy/DefaultConfiguration.swift;
    # a test keeps the two identical), so it needs no file beside it. To change a setting, write a
    # file with the same layout holding only the keys to change and pass it with --policy-file.
    #
    # Effective cpu and memory are the limits below times the level's multiplier:
    # UNCLASSIFIED 1.0, CONFIDENTIAL 0.8, SECRET 0.6, TOP_SECRET 0.4.
    sandbox_configuration:
      default_policies:
        UNCLASSIFIED:
          isolation_level: "process"
          cpu_limit: "2.0"
          memory_limit: "4GB"
          network_access: ["internet", "intranet"]
          pids_limit: 1024
          capabilities: [network, filesystem_write, subprocess, python]
          allowed_destinations: []
          allowed_ports: []
          workspace: "/workspace"
          workspace_size: "1GB"
          hidden_paths: ["/root", "/home", "/etc/shadow", "/etc/gshadow", "/etc/ssh"]
          read_only_paths: []
          # On an escape attempt, beyond refusing and reporting it: alert, deny (kill the process),
          # kill (end the sandbox) or freeze (cgroup freezer, for forensics; alcub3 sandbox thaw).
          on_violation: "alert"
        CONFIDENTIAL:
          isolation_level: "container"
          cpu_limit: "1.5"
          memory_limit: "3GB"
          network_access: ["intranet"]
          pids_limit: 512
          capabilities: [network, filesystem_write, subprocess, python]
          allowed_destinations: []
          allowed_ports: []
          workspace: "/workspace"
          workspace_size: "1GB"
          hidden_paths: ["/root", "/home", "/etc/shadow", "/etc/gshadow", "/etc/ssh"]
          read_only_paths: []
          on_violation: "alert"
        SECRET:
          isolation_level: "vm"
          cpu_limit: "1.0"
          memory_limit: "2GB"
          # Only what allowed_destinations and allowed_ports list; nothing until a site lists its network.
          network_access: ["classified_network"]
          pids_limit: 256
          capabilities: [network, filesystem_write, subprocess, python]
          allowed_destinations: []
          allowed_ports: []
          workspace: "/workspace"
          workspace_size: "1GB"
          hidden_paths: ["/root", "/home", "/etc/shadow", "/etc/gshadow", "/etc/ssh", "/var/log", "/mnt", "/media"]
          read_only_paths: []
          on_violation: "kill"
        TOP_SECRET:
          isolation_level: "hardware"
          cpu_limit: "0.5"
          memory_limit: "1GB"
          network_access: ["air_gapped_only"]
          pids_limit: 128
          # No network: no sockets at all, not even Unix sockets on a visible path.
          capabilities: [filesystem_write, subprocess, python]
          allowed_destinations: []
          allowed_ports: []
          workspace: "/workspace"
          workspace_size: "1GB"
          hidden_paths: ["/root", "/home", "/etc/shadow", "/etc/gshadow", "/etc/ssh", "/var/log", "/mnt", "/media"]
          read_only_paths: []
          on_violation: "freeze"

      integrity_monitoring:
        enabled: true
        check_interval: "30s"
        baseline_update_interval: "24h"
        full_rescan_every: 10   # every tenth cycle reads the whole tree, for changes telemetry could not see
        anomaly_threshold: 0.8

      behavioral_analysis:
        enabled: true
        observation_window: "300s"
        analysis_window: "10s"      # after the observation window, behaviour is scored once per analysis window
        ml_model: "behavioral_anomaly_v2"
        sensitivity: "high"

    service:
      socket_path: "/run/alcub3/alcub3.sock"
      # socket_group: "alcub3"   # members of this group may use the socket besides root
      # baseline_key: "/etc/alcub3/baseline.key"   # an operator's Ed25519 key (base64, 0600); default STATE_DIR/baseline.key
      state_dir: "/var/lib/alcub3"
      metrics_address: "127.0.0.1:9464"
      retention:
        max_age: "7d"
        max_size: "1GB"
      output_limit: "16MiB"   # of each sandbox's stdout and stderr kept in output.log; the rest is discarded, with a finding

    """#
}
