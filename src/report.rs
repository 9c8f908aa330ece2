//! Human output: units for packets, bytes and rates, and the flow tables
//! the CLI prints.

use flowtable_offload::FlowRecord;

pub use flowtable_capture::io_error;

const BINARY: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// Bytes with binary units: 512 B, 1.5 KiB, 3.2 MiB.
pub fn bytes(n: u64) -> String {
    bytes_in(n, byte_scale(n))
}

/// The binary unit (a power of 1024) `n` is shown in.
fn byte_scale(n: u64) -> usize {
    let mut i = 0;
    let mut v = n;
    while v >= 1024 && i + 1 < BINARY.len() {
        v /= 1024;
        i += 1;
    }
    i
}

fn bytes_in(n: u64, scale: usize) -> String {
    if scale == 0 {
        return format!("{n} B");
    }
    scaled(n as f64, 1024f64.powi(scale as i32), &format!(" {}", BINARY[scale]))
}

/// One decimal in the given unit; a value too small to show as 0.1 of it
/// (a small flow in a column of large ones) shows as `<0.1`, not as 0.
fn scaled(v: f64, div: f64, unit: &str) -> String {
    if v == 0.0 {
        return format!("0{unit}");
    }
    let x = v / div;
    if x < 0.05 {
        format!("<0.1{unit}")
    } else {
        format!("{x:.1}{unit}")
    }
}

/// The decimal scale of a count: 0 plain, then k, M, G.
fn count_scale(n: u64) -> usize {
    match n {
        0..=9_999 => 0,
        10_000..=999_999 => 1,
        1_000_000..=999_999_999 => 2,
        _ => 3,
    }
}

const DECIMAL: [(f64, &str); 4] = [(1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G")];

fn count_in(n: u64, scale: usize) -> String {
    if scale == 0 {
        return n.to_string();
    }
    let (div, unit) = DECIMAL[scale];
    scaled(n as f64, div, unit)
}

/// A count with k/M/G suffixes.
pub fn count(n: u64) -> String {
    count_in(n, count_scale(n))
}

/// A count and its noun, singular for exactly one: `1 packet`,
/// `2 packets`, `10.6M packets`.
pub fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", count(n))
    }
}

fn rate_scale(per_second: f64) -> usize {
    DECIMAL.iter().rposition(|(div, _)| per_second >= *div).unwrap_or(0)
}

fn rate_in(per_second: f64, scale: usize, unit: &str) -> String {
    let (div, p) = DECIMAL[scale];
    if scale == 0 {
        return format!("{per_second:.1} {unit}/s");
    }
    let mut s = scaled(per_second, div, "");
    s.push_str(&format!(" {p}{unit}/s"));
    s
}

/// A rate per second with k/M/G suffixes.
pub fn rate(per_second: f64, unit: &str) -> String {
    rate_in(per_second, rate_scale(per_second), unit)
}

/// A column of counts in one scale, the one its largest value needs
/// (`10.6M` above `8.3M`, never `8276.5k`).
pub fn count_column(values: &[u64]) -> Vec<String> {
    let scale = count_scale(values.iter().copied().max().unwrap_or(0));
    values.iter().map(|n| count_in(*n, scale)).collect()
}

/// A column of byte counts in one binary unit, its largest value's.
pub fn bytes_column(values: &[u64]) -> Vec<String> {
    let scale = byte_scale(values.iter().copied().max().unwrap_or(0));
    values.iter().map(|n| bytes_in(*n, scale)).collect()
}

/// A column of rates in one scale, its largest value's.
pub fn rate_column(values: &[f64], unit: &str) -> Vec<String> {
    let scale = rate_scale(values.iter().copied().fold(0.0, f64::max));
    values.iter().map(|v| rate_in(*v, scale, unit)).collect()
}

/// A column of bit rates (from bytes per second) in one scale.
pub fn bitrate_column(bytes_per_s: &[f64]) -> Vec<String> {
    rate_column(&bytes_per_s.iter().map(|b| b * 8.0).collect::<Vec<_>>(), "bit")
}

/// A column of byte counts whose unit goes in its header, for narrow
/// screens: `("KiB", ["792.6", "3.1"])`; `bytes` with whole numbers below
/// a KiB.
pub fn bytes_column_unit(values: &[u64]) -> (String, Vec<String>) {
    let scale = byte_scale(values.iter().copied().max().unwrap_or(0));
    if scale == 0 {
        return ("bytes".into(), values.iter().map(u64::to_string).collect());
    }
    let div = 1024f64.powi(scale as i32);
    (BINARY[scale].into(), values.iter().map(|n| scaled(*n as f64, div, "")).collect())
}

/// A column of bit rates (from bytes per second) whose unit goes in its
/// header: `("Mbit/s", ["12.3", "0.8"])`.
pub fn bitrate_column_unit(bytes_per_s: &[f64]) -> (String, Vec<String>) {
    let bits: Vec<f64> = bytes_per_s.iter().map(|b| b * 8.0).collect();
    let scale = rate_scale(bits.iter().copied().fold(0.0, f64::max));
    let (div, p) = DECIMAL[scale];
    let cells = bits.iter().map(|v| if scale == 0 { format!("{v:.0}") } else { scaled(*v, div, "") }).collect();
    (format!("{p}bit/s"), cells)
}

pub fn duration_ns(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// One end of a flow: `addr:port`, `[v6]:port`, or the bare address for
/// protocols without ports (ICMP, GRE, ESP, IP-in-IP, ...).
pub fn endpoint(proto: u8, addr: &str, port: u16) -> String {
    if !flowtable_sw::key::has_ports(proto) {
        addr.to_string()
    } else if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// An ICMP or ICMPv6 message as conntrack names its fields: `type 8 code
/// 0 id 4242` (the identifier only for types that carry one); empty for
/// other protocols, or when the type is unknown (only the NIC counted it).
pub fn icmp_text(proto: u8, icmp_type: Option<u8>, icmp_code: Option<u8>, id: u16) -> String {
    use flowtable_sw::wire::icmp::{is_query, IcmpVersion};
    let version = match proto {
        1 => IcmpVersion::V4,
        58 => IcmpVersion::V6,
        _ => return String::new(),
    };
    match (icmp_type, icmp_code) {
        (Some(t), Some(c)) if is_query(version, t) => format!("type {t} code {c} id {id}"),
        (Some(t), Some(c)) => format!("type {t} code {c}"),
        _ if id != 0 => format!("id {id}"),
        _ => String::new(),
    }
}

/// The server side of a flow with, for ICMP, its type, code and id
/// after the address.
pub fn server_text(proto: u8, addr: &str, port: u16, icmp_type: Option<u8>, icmp_code: Option<u8>) -> String {
    let icmp = icmp_text(proto, icmp_type, icmp_code, port);
    let e = endpoint(proto, addr, port);
    if icmp.is_empty() {
        e
    } else {
        format!("{e} {icmp}")
    }
}

/// Lays rows out in columns as wide as their widest cell; numeric columns
/// (named in `right`) align right.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if right.contains(&i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// The top flows by bytes, as a table.
pub fn top_records(records: &[FlowRecord], n: usize) -> String {
    let mut sorted: Vec<&FlowRecord> = records.iter().collect();
    sorted.sort_by(|a, b| b.bytes().cmp(&a.bytes()).then(a.id.cmp(&b.id)));
    sorted.truncate(n);
    let packets = count_column(&sorted.iter().map(|r| r.packets()).collect::<Vec<_>>());
    let bytes = bytes_column(&sorted.iter().map(|r| r.bytes()).collect::<Vec<_>>());
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .zip(packets.into_iter().zip(bytes))
        .map(|(r, (packets, bytes))| {
            let hw = r.orig.hw_packets + r.reply.hw_packets;
            let share = if r.packets() == 0 { 0.0 } else { 100.0 * hw as f64 / r.packets() as f64 };
            let offload = match (&r.offload, &r.refused) {
                (Some(o), _) => o.action.kind().to_string(),
                (None, Some(_)) => "refused".into(),
                (None, None) => "-".into(),
            };
            vec![
                flowtable_sw::key::proto_name(r.proto).to_string(),
                endpoint(r.proto, &r.src.to_string(), r.sport),
                server_text(r.proto, &r.dst.to_string(), r.dport, r.orig.icmp_type, r.orig.icmp_code),
                packets,
                bytes,
                format!("{share:.1}%"),
                offload,
                r.class.clone().unwrap_or_else(|| "-".into()),
                r.end_reason.as_str().to_string(),
            ]
        })
        .collect();
    table(&["proto", "client", "server", "packets", "bytes", "by NIC", "offload", "rule", "ended"], &rows, &[3, 4, 5])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(8_276_500), "8.3M");
        assert_eq!(count(1_048_576), "1.0M");
        assert_eq!(rate(2_500_000.0, "pkt"), "2.5 Mpkt/s");
        let t = table(&["a", "num"], &[vec!["long cell".into(), "7".into()]], &[1]);
        assert_eq!(t, "a          num\nlong cell    7\n");
    }

    #[test]
    fn a_column_takes_its_largest_values_scale() {
        // The case: 10.6M beside 8276.5k.
        assert_eq!(count_column(&[10_600_000, 8_276_500, 42, 0]), ["10.6M", "8.3M", "<0.1M", "0M"]);
        assert_eq!(count_column(&[9_999, 12]), ["9999", "12"]);
        assert_eq!(count_column(&[12_345, 999]), ["12.3k", "1.0k"]);
        assert_eq!(count_column(&[]), Vec::<String>::new());
        assert_eq!(bytes_column(&[3 * 1024 * 1024, 1536, 60]), ["3.0 MiB", "<0.1 MiB", "<0.1 MiB"]);
        assert_eq!(bytes_column(&[1023, 60]), ["1023 B", "60 B"]);
        assert_eq!(bytes_column(&[5 << 30, 512 << 20]), ["5.0 GiB", "0.5 GiB"]);
        assert_eq!(rate_column(&[2_500_000.0, 800_000.0, 0.0], "bit"), ["2.5 Mbit/s", "0.8 Mbit/s", "0 Mbit/s"]);
        assert_eq!(rate_column(&[512.0, 3.0], "bit"), ["512.0 bit/s", "3.0 bit/s"]);
        assert_eq!(bitrate_column(&[125_000.0, 1_250.0]), ["1.0 Mbit/s", "<0.1 Mbit/s"]);
    }

    #[test]
    fn narrow_columns_put_the_unit_in_the_header() {
        assert_eq!(bytes_column_unit(&[811_622, 3_174]), ("KiB".to_string(), vec!["792.6".into(), "3.1".into()]));
        assert_eq!(bytes_column_unit(&[600, 60]), ("bytes".to_string(), vec!["600".into(), "60".into()]));
        let (unit, cells) = bitrate_column_unit(&[1_537_500.0, 100_000.0, 0.0]);
        assert_eq!((unit.as_str(), cells), ("Mbit/s", vec!["12.3".into(), "0.8".into(), "0".into()]));
        assert_eq!(bitrate_column_unit(&[10.0]), ("bit/s".to_string(), vec!["80".into()]));
    }

    #[test]
    fn one_is_singular() {
        assert_eq!(counted(0, "packet"), "0 packets");
        assert_eq!(counted(1, "packet"), "1 packet");
        assert_eq!(counted(2, "packet"), "2 packets");
        assert_eq!(counted(10_600_000, "packet"), "10.6M packets");
    }

    #[test]
    fn ends_without_ports_show_none() {
        assert_eq!(endpoint(6, "10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(endpoint(17, "2001:db8::1", 53), "[2001:db8::1]:53");
        assert_eq!(endpoint(4, "10.0.0.1", 0), "10.0.0.1");
        assert_eq!(endpoint(47, "10.0.0.1", 0), "10.0.0.1");
        assert_eq!(server_text(1, "10.0.0.2", 65279, Some(8), Some(0)), "10.0.0.2 type 8 code 0 id 65279");
        assert_eq!(server_text(1, "10.0.0.2", 0, Some(3), Some(3)), "10.0.0.2 type 3 code 3");
        assert_eq!(server_text(58, "2001:db8::2", 7, Some(128), Some(0)), "2001:db8::2 type 128 code 0 id 7");
        // ICMPv4's echo number means nothing in ICMPv6.
        assert_eq!(server_text(58, "2001:db8::2", 0, Some(8), Some(0)), "2001:db8::2 type 8 code 0");
        assert_eq!(server_text(1, "10.0.0.2", 9, None, None), "10.0.0.2 id 9");
        assert_eq!(server_text(4, "10.0.0.2", 0, None, None), "10.0.0.2");
    }
}
