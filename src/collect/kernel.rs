//! The rest of node_exporter's default Linux collectors that dashboards such as "Node Exporter
//! Full" chart: vmstat, file descriptors, entropy, sockets (sockstat), protocol counters
//! (netstat), UDP queues, softnet, ARP, conntrack and the network class in `/sys`. Each parser
//! takes the file's text, so that the tests feed them fixtures; a file that is missing (an older
//! kernel, a module not loaded) leaves its figures out, as node_exporter does.

use std::path::Path;

use super::host::read_number;
use super::Samples;

/// `/proc/vmstat`: the fields node_exporter keeps by default (paging, swapping, faults, OOM
/// kills), each as `node_vmstat_<field>`.
pub fn vmstat(text: &str, out: &mut Samples) {
    for line in text.lines() {
        let Some((field, value)) = line.split_once(' ') else {
            continue;
        };
        let kept = field == "oom_kill"
            || field.starts_with("pgpg")
            || field.starts_with("pswp")
            || (field.starts_with("pg") && field.ends_with("fault"));
        if let (true, Ok(value)) = (kept, value.trim().parse::<f64>()) {
            out.add(&format!("node_vmstat_{field}"), &[], value);
        }
    }
}

/// `/proc/sys/fs/file-nr`: file handles allocated, and the system's maximum.
pub fn filefd(text: &str, out: &mut Samples) {
    let fields: Vec<f64> = text
        .split_ascii_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if let [allocated, _unused, maximum] = fields[..] {
        out.add("node_filefd_allocated", &[], allocated);
        out.add("node_filefd_maximum", &[], maximum);
    }
}

/// `/proc/net/sockstat` and `sockstat6`: sockets in use per protocol, as
/// `node_sockstat_<PROTOCOL>_<field>`; the `mem` figures (pages) also in bytes.
pub fn sockstat(text: &str, page_bytes: f64, out: &mut Samples) {
    for line in text.lines() {
        let Some((protocol, rest)) = line.split_once(':') else {
            continue;
        };
        let words: Vec<&str> = rest.split_ascii_whitespace().collect();
        for pair in words.chunks_exact(2) {
            let Ok(value) = pair[1].parse::<f64>() else {
                continue;
            };
            let name = format!("node_sockstat_{protocol}_{}", pair[0]);
            out.add(&name, &[], value);
            // The kernel counts TCP and UDP memory in pages, fragment memory in bytes.
            if pair[0] == "mem" {
                out.add(&format!("{name}_bytes"), &[], value * page_bytes);
            }
        }
    }
}

/// The protocol counters node_exporter's netstat collector keeps by default: errors, IP
/// octets and forwarding, ICMP messages, TCP opens, segments, resets, retransmits, listen
/// overflows and SYN cookies, UDP datagrams and buffer errors.
fn netstat_kept(name: &str) -> bool {
    let Some((protocol, field)) = name.split_once('_') else {
        return false;
    };
    if field == "InErrors" || field == "InErrs" {
        return true;
    }
    match protocol {
        "Ip" => field == "Forwarding",
        "Ip6" | "IpExt" => matches!(field, "InOctets" | "OutOctets"),
        "Icmp" | "Icmp6" => matches!(field, "InMsgs" | "OutMsgs"),
        "TcpExt" => {
            field.starts_with("Listen")
                || field.starts_with("Syncookies")
                || matches!(field, "TCPSynRetrans" | "TCPTimeouts")
        }
        "Tcp" => matches!(
            field,
            "ActiveOpens"
                | "InSegs"
                | "OutSegs"
                | "OutRsts"
                | "PassiveOpens"
                | "RetransSegs"
                | "CurrEstab"
        ),
        "Udp" | "Udp6" => matches!(
            field,
            "InDatagrams" | "OutDatagrams" | "NoPorts" | "RcvbufErrors" | "SndbufErrors"
        ),
        _ => false,
    }
}

/// `/proc/net/netstat` and `/proc/net/snmp`: a line of names, then a line of values, per
/// protocol (`TcpExt: SyncookiesSent ...` / `TcpExt: 0 ...`); kept as
/// `node_netstat_<Protocol>_<Field>`.
pub fn netstat(text: &str, out: &mut Samples) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks_exact(2) {
        let (Some((protocol, names)), Some((again, values))) =
            (pair[0].split_once(':'), pair[1].split_once(':'))
        else {
            continue;
        };
        if protocol != again {
            continue;
        }
        for (field, value) in names
            .split_ascii_whitespace()
            .zip(values.split_ascii_whitespace())
        {
            let name = format!("{protocol}_{field}");
            if let (true, Ok(value)) = (netstat_kept(&name), value.parse::<f64>()) {
                out.add(&format!("node_netstat_{name}"), &[], value);
            }
        }
    }
}

/// `/proc/net/snmp6`: one `Ip6InOctets  123` per line; the protocol is the name up to its
/// `6` (`Ip6`, `Icmp6`, `Udp6`, `UdpLite6`).
pub fn snmp6(text: &str, out: &mut Samples) {
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(at) = key.find('6') else { continue };
        let name = format!("{}_{}", &key[..=at], &key[at + 1..]);
        if let (true, Ok(value)) = (netstat_kept(&name), value.parse::<f64>()) {
            out.add(&format!("node_netstat_{name}"), &[], value);
        }
    }
}

/// `/proc/net/softnet_stat`: per CPU (one line each, hexadecimal), packets processed, dropped
/// for a full backlog, and the times the budget ran out.
pub fn softnet(text: &str, out: &mut Samples) {
    const FIELDS: [(usize, &str); 3] = [
        (0, "node_softnet_processed_total"),
        (1, "node_softnet_dropped_total"),
        (2, "node_softnet_times_squeezed_total"),
    ];
    for (cpu, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let cpu = cpu.to_string();
        for (field, metric) in FIELDS {
            if let Some(value) = fields
                .get(field)
                .and_then(|f| u64::from_str_radix(f, 16).ok())
            {
                out.add(metric, &[("cpu", &cpu)], value as f64);
            }
        }
    }
}

/// `/proc/net/arp`: the neighbour entries per interface.
pub fn arp(text: &str, out: &mut Samples) {
    let mut per_device: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in text.lines().skip(1) {
        if let Some(device) = line.split_ascii_whitespace().nth(5) {
            *per_device.entry(device).or_default() += 1;
        }
    }
    for (device, count) in per_device {
        out.add("node_arp_entries", &[("device", device)], count as f64);
    }
}

/// `/proc/net/udp` or `/proc/net/udp6`: the bytes queued in all UDP sockets' send and receive
/// buffers (the hexadecimal `tx_queue:rx_queue` column), as `node_udp_queues{ip,queue}`. A
/// line that does not parse is skipped rather than guessed at.
pub fn udp_queues(text: &str, ip: &str, out: &mut Samples) {
    let (mut transmit, mut receive) = (0u64, 0u64);
    for line in text.lines().skip(1) {
        let Some((tx, rx)) = line
            .split_ascii_whitespace()
            .nth(4)
            .and_then(|queues| queues.split_once(':'))
        else {
            continue;
        };
        if let (Ok(tx), Ok(rx)) = (u64::from_str_radix(tx, 16), u64::from_str_radix(rx, 16)) {
            transmit = transmit.saturating_add(tx);
            receive = receive.saturating_add(rx);
        }
    }
    out.add(
        "node_udp_queues",
        &[("ip", ip), ("queue", "tx")],
        transmit as f64,
    );
    out.add(
        "node_udp_queues",
        &[("ip", ip), ("queue", "rx")],
        receive as f64,
    );
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
}

/// `/proc/sys`: entropy, and connection tracking where the module is loaded.
pub fn sysctls(proc_root: &Path, out: &mut Samples) {
    for (file, metric) in [
        (
            "sys/kernel/random/entropy_avail",
            "node_entropy_available_bits",
        ),
        ("sys/kernel/random/poolsize", "node_entropy_pool_size_bits"),
        (
            "sys/net/netfilter/nf_conntrack_count",
            "node_nf_conntrack_entries",
        ),
        (
            "sys/net/netfilter/nf_conntrack_max",
            "node_nf_conntrack_entries_limit",
        ),
    ] {
        if let Some(value) = read_number(&proc_root.join(file)) {
            out.add(metric, &[], value);
        }
    }
}

/// `/sys/class/net/<device>/`: link state, carrier changes, MTU, speed and queue length, as
/// node_exporter's netclass collector names them. Reading `carrier` or `speed` of a link that
/// is down fails; those figures are then left out, as node_exporter leaves them.
pub fn netclass(class_dir: &Path, ignore: &[String], out: &mut Samples) {
    let Ok(entries) = std::fs::read_dir(class_dir) else {
        return;
    };
    let mut devices: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| !ignore.contains(name))
        .collect();
    devices.sort();
    for device in devices {
        let dir = class_dir.join(&device);
        let labels = [("device", device.as_str())];
        if let Some(state) = read_trimmed(&dir.join("operstate")) {
            out.add(
                "node_network_up",
                &labels,
                f64::from(u8::from(state == "up")),
            );
        }
        for (file, metric, scale) in [
            ("carrier", "node_network_carrier", 1.0),
            ("carrier_changes", "node_network_carrier_changes_total", 1.0),
            (
                "carrier_up_count",
                "node_network_carrier_up_changes_total",
                1.0,
            ),
            (
                "carrier_down_count",
                "node_network_carrier_down_changes_total",
                1.0,
            ),
            ("mtu", "node_network_mtu_bytes", 1.0),
            // Megabits per second in sysfs (-1 when unknown, kept as node_exporter keeps it).
            ("speed", "node_network_speed_bytes", 125_000.0),
            ("tx_queue_len", "node_network_transmit_queue_length", 1.0),
            // Not in /proc/net/dev: node_exporter takes it from the link's netlink statistics,
            // which sysfs mirrors.
            (
                "statistics/rx_nohandler",
                "node_network_receive_nohandler_total",
                1.0,
            ),
        ] {
            if let Some(value) = read_number(&dir.join(file)) {
                out.add(metric, &labels, value * scale);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::render;

    fn assert_has(got: &[String], lines: &[&str]) {
        for line in lines {
            assert!(got.iter().any(|l| l == line), "{line}: {got:?}");
        }
    }

    #[test]
    fn proc_files_become_node_exporter_figures() {
        let mut out = Samples::new();
        vmstat(
            "nr_free_pages 100\npgpgin 5\npgfault 77\npgmajfault 3\npswpout 1\noom_kill 2\npgsteal_kswapd 9\n",
            &mut out,
        );
        filefd("468\t0\t2466290\n", &mut out);
        sockstat(
            "sockets: used 29\nTCP: inuse 15 orphan 0 tw 575 alloc 15 mem 3\nFRAG: inuse 0 memory 0\n",
            4096.0,
            &mut out,
        );
        softnet(
            "0055ee44 00000000 00000002 00000000\n0000000a 00000001 00000000 00000000\n",
            &mut out,
        );
        arp(
            "IP address HW type Flags HW address Mask Device\n\
             192.0.2.1 0x1 0x2 02:fc:00:00:00:05 * eth0\n\
             192.0.2.2 0x1 0x2 02:fc:00:00:00:06 * eth0\n",
            &mut out,
        );
        let got = render(out);
        assert_has(
            &got,
            &[
                "node_vmstat_pgpgin 5",
                "node_vmstat_pgfault 77",
                "node_vmstat_pgmajfault 3",
                "node_vmstat_pswpout 1",
                "node_vmstat_oom_kill 2",
                "node_filefd_allocated 468",
                "node_filefd_maximum 2466290",
                "node_sockstat_sockets_used 29",
                "node_sockstat_TCP_tw 575",
                "node_sockstat_TCP_mem 3",
                "node_sockstat_TCP_mem_bytes 12288",
                "node_sockstat_FRAG_memory 0",
                r#"node_softnet_processed_total{cpu="0"} 5631556"#,
                r#"node_softnet_times_squeezed_total{cpu="0"} 2"#,
                r#"node_softnet_dropped_total{cpu="1"} 1"#,
                r#"node_arp_entries{device="eth0"} 2"#,
            ],
        );
        assert!(!got
            .iter()
            .any(|l| l.contains("nr_free_pages") || l.contains("pgsteal")));
        assert!(!got.iter().any(|l| l.contains("FRAG_memory_bytes")));
    }

    #[test]
    fn netstat_keeps_node_exporters_default_fields() {
        let mut out = Samples::new();
        netstat(
            "TcpExt: SyncookiesSent ListenOverflows TCPSynRetrans PruneCalled\n\
             TcpExt: 1 2 3 4\n\
             IpExt: InNoRoutes InOctets OutOctets\n\
             IpExt: 0 1000 2000\n\
             Tcp: RtoAlgorithm ActiveOpens InErrs CurrEstab\n\
             Tcp: 1 10 2 5\n\
             Udp: InDatagrams NoPorts InErrors IgnoredMulti\n\
             Udp: 7 1 0 4\n\
             Ip: Forwarding DefaultTTL\n\
             Ip: 2 64\n",
            &mut out,
        );
        snmp6(
            "Ip6InReceives 6\nIp6InOctets 600\nIcmp6OutMsgs 3\nUdpLite6InErrors 0\nUdp6NoPorts 1\n",
            &mut out,
        );
        let got = render(out);
        assert_has(
            &got,
            &[
                "node_netstat_TcpExt_SyncookiesSent 1",
                "node_netstat_TcpExt_ListenOverflows 2",
                "node_netstat_TcpExt_TCPSynRetrans 3",
                "node_netstat_IpExt_InOctets 1000",
                "node_netstat_Tcp_ActiveOpens 10",
                "node_netstat_Tcp_InErrs 2",
                "node_netstat_Tcp_CurrEstab 5",
                "node_netstat_Udp_InErrors 0",
                "node_netstat_Ip_Forwarding 2",
                "node_netstat_Ip6_InOctets 600",
                "node_netstat_Icmp6_OutMsgs 3",
                "node_netstat_UdpLite6_InErrors 0",
                "node_netstat_Udp6_NoPorts 1",
            ],
        );
        for left_out in [
            "PruneCalled",
            "RtoAlgorithm",
            "IgnoredMulti",
            "DefaultTTL",
            "Ip6_InReceives",
            "InNoRoutes",
        ] {
            assert!(
                !got.iter().any(|l| l.contains(left_out)),
                "{left_out}: {got:?}"
            );
        }
        // Lines that do not pair up are skipped, not misread.
        let mut out = Samples::new();
        netstat("Tcp: ActiveOpens\nUdp: 5\n", &mut out);
        assert!(render(out).is_empty());
    }

    #[test]
    fn sysfs_and_sysctls_as_node_exporter_reads_them() {
        let root = tempfile::tempdir().unwrap();
        let eth0 = root.path().join("class/net/eth0");
        let wlan0 = root.path().join("class/net/wlan0");
        std::fs::create_dir_all(&eth0).unwrap();
        std::fs::create_dir_all(&wlan0).unwrap();
        for (file, text) in [
            ("operstate", "up\n"),
            ("carrier", "1\n"),
            ("carrier_changes", "4\n"),
            ("mtu", "1500\n"),
            ("speed", "1000\n"),
            ("statistics/rx_nohandler", "7\n"),
        ] {
            std::fs::create_dir_all(eth0.join(file).parent().unwrap()).unwrap();
            std::fs::write(eth0.join(file), text).unwrap();
        }
        std::fs::write(wlan0.join("operstate"), "dormant\n").unwrap();
        let random = root.path().join("sys/kernel/random");
        std::fs::create_dir_all(&random).unwrap();
        std::fs::write(random.join("entropy_avail"), "256\n").unwrap();
        let mut out = Samples::new();
        netclass(&root.path().join("class/net"), &[], &mut out);
        sysctls(root.path(), &mut out);
        let got = render(out);
        assert_has(
            &got,
            &[
                r#"node_network_up{device="eth0"} 1"#,
                r#"node_network_up{device="wlan0"} 0"#,
                r#"node_network_carrier{device="eth0"} 1"#,
                r#"node_network_carrier_changes_total{device="eth0"} 4"#,
                r#"node_network_mtu_bytes{device="eth0"} 1500"#,
                r#"node_network_speed_bytes{device="eth0"} 125000000"#,
                r#"node_network_receive_nohandler_total{device="eth0"} 7"#,
                "node_entropy_available_bits 256",
            ],
        );
        assert!(!got.iter().any(|l| l.contains("carrier{device=\"wlan0\"")));
        assert!(!got.iter().any(|l| l.contains("nf_conntrack")));
        let mut out = Samples::new();
        netclass(&root.path().join("class/net"), &["eth0".into()], &mut out);
        assert!(!render(out).iter().any(|l| l.contains("eth0")));
    }

    #[test]
    fn udp_queues_sum_every_sockets_hexadecimal_queues() {
        // Two sockets from a real /proc/net/udp, their queues changed to tell tx from rx, and
        // a line cut short.
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20 123: 3500007F:0035 00000000:0000 07 00000010:00000200 00:00000000 00000000   101        0 17571 2 0000000000000000 0\n\
            \x20 456: 00000000:0044 00000000:0000 07 00000001:00000A00 00:00000000 00000000     0        0 20334 2 0000000000000000 0\n\
            \x20 789: 00000000:0045\n";
        let mut out = Samples::new();
        udp_queues(text, "v4", &mut out);
        assert_eq!(
            render(out),
            [
                r#"node_udp_queues{ip="v4",queue="tx"} 17"#,
                r#"node_udp_queues{ip="v4",queue="rx"} 3072"#,
            ]
        );
    }
}
