//! Human output: units for packets, bytes and rates, and the flow tables
//! the CLI prints.

use flowtable_offload::FlowRecord;

/// Bytes with binary units: 512 B, 1.5 KiB, 3.2 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// A count with k/M/G suffixes.
pub fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}k", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// A rate per second with k/M/G suffixes.
pub fn rate(per_second: f64, unit: &str) -> String {
    let (v, p) = if per_second >= 1e9 {
        (per_second / 1e9, "G")
    } else if per_second >= 1e6 {
        (per_second / 1e6, "M")
    } else if per_second >= 1e3 {
        (per_second / 1e3, "k")
    } else {
        (per_second, "")
    };
    format!("{v:.1} {p}{unit}/s")
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

fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
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
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .take(n)
        .map(|r| {
            let hw = r.orig.hw_packets + r.reply.hw_packets;
            let share = if r.packets() == 0 { 0.0 } else { 100.0 * hw as f64 / r.packets() as f64 };
            let offload = match (&r.offload, &r.refused) {
                (Some(o), _) => format!("{:?}", o.action.kind()).to_lowercase(),
                (None, Some(_)) => "refused".into(),
                (None, None) => "-".into(),
            };
            vec![
                flowtable_sw::key::proto_name(r.proto).to_string(),
                endpoint(&r.src, r.sport),
                endpoint(&r.dst, r.dport),
                count(r.packets()),
                bytes(r.bytes()),
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
        assert_eq!(rate(2_500_000.0, "pkt"), "2.5 Mpkt/s");
        let t = table(&["a", "num"], &[vec!["long cell".into(), "7".into()]], &[1]);
        assert_eq!(t, "a          num\nlong cell    7\n");
    }
}
