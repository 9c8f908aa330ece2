//! `flowtable watch`: a live view of the top flows, refreshed in place in
//! the terminal like `top`. Rates are the daemon's current ones (as
//! `flowtable flows` shows them beside the mean); `s` changes the sort,
//! `q` quits. If the daemon goes away the view says so and keeps trying.
//!
//! Columns are laid out by priority: the id, both ends, bytes, the
//! current rate and where the flow is handled always show (an 80-column
//! terminal has room for them with IPv4 addresses); each further column,
//! most useful first, shows if it fits whole. Numeric columns carry their
//! unit in the header, one scale per column, so no cell is cut. Each flow
//! is one line: the ends take the width of the widest shown, and where even
//! the must-have columns leave too little (IPv6 at 80 columns) an end is
//! cut with a visible `…`, keeping its port, never wrapped; the title says
//! how many rows are shown.

use super::{Client, Target};
use crate::control::{Command, FlowSummary, FlowsPage, SortKey, Stats};
use crate::report;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: Target,
    /// Milliseconds between refreshes.
    #[arg(long, default_value_t = 1000, value_parser = crate::args::whole::<u64>)]
    pub interval_ms: u64,
    /// bytes, packets, rate or age (`s` cycles through them).
    #[arg(long, default_value = "bytes", value_parser = super::parse_sort)]
    pub sort: SortKey,
    /// As for `flowtable flows`.
    #[arg(long)]
    pub filter: Option<String>,
}

struct View {
    stats: Option<Stats>,
    page: Option<FlowsPage>,
    refreshes: u64,
    error: Option<String>,
}

pub fn watch(a: WatchArgs) -> Result<(), String> {
    let path = a.target.socket_path()?;
    // Fail before taking over the terminal when there's no daemon at all.
    let client = Client::connect(&path)?;
    let mut terminal = ratatui::try_init().map_err(|e| format!("setting up the terminal: {e}"))?;
    let result = run(&mut terminal, client, &a);
    ratatui::restore();
    result
}

fn run(terminal: &mut DefaultTerminal, client: Client, a: &WatchArgs) -> Result<(), String> {
    let path = client.path().to_path_buf();
    let mut client = Some(client);
    let interval = Duration::from_millis(a.interval_ms.max(50));
    let mut sort = a.sort;
    let mut view = View { stats: None, page: None, refreshes: 0, error: None };
    let mut next_refresh = Instant::now();
    loop {
        if Instant::now() >= next_refresh {
            // Four summary lines, the table's two borders and its header.
            let rows = terminal.size().map(|s| s.height.saturating_sub(7)).unwrap_or(20).max(1) as usize;
            if client.is_none() {
                client = Client::connect(&path).ok();
            }
            match client.as_mut().map(|c| fetch(c, sort, a.filter.clone(), rows)) {
                Some(Ok((stats, page))) => {
                    view.stats = Some(stats);
                    view.page = Some(page);
                    view.refreshes += 1;
                    view.error = None;
                }
                Some(Err(e)) => {
                    view.error = Some(e);
                    client = None;
                }
                None => view.error = Some(format!("the daemon is not running: cannot connect to {}", path.display())),
            }
            next_refresh = Instant::now() + interval;
        }
        terminal
            .draw(|f| render(f, &view, sort, &path.display().to_string(), interval))
            .map_err(|e| format!("drawing: {e}"))?;
        let wait = next_refresh.saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(|e| e.to_string())? {
            if let Event::Key(k) = event::read().map_err(|e| e.to_string())? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                    KeyCode::Char('s') => {
                        let i = SortKey::ALL.iter().position(|s| *s == sort).unwrap_or(0);
                        sort = SortKey::ALL[(i + 1) % SortKey::ALL.len()];
                        next_refresh = Instant::now();
                    }
                    _ => {}
                }
            }
        }
    }
}

fn fetch(c: &mut Client, sort: SortKey, filter: Option<String>, rows: usize) -> Result<(Stats, FlowsPage), String> {
    let stats: Stats = c.call_as(&Command::Stats {})?;
    let page: FlowsPage = c.call_as(&Command::Flows { filter, sort, offset: 0, limit: Some(rows) })?;
    Ok((stats, page))
}

/// Where a flow's packets go, in a word: its rules' placement once
/// offloaded, its stage on the way in or out, else software.
fn where_text(f: &FlowSummary) -> String {
    match f.stage.as_str() {
        "offloaded" => match f.placement.as_str() {
            "kernel-software" => "kernel".into(),
            p => p.to_string(),
        },
        s @ ("queued" | "installing" | "removing") => s.to_string(),
        _ => "software".into(),
    }
}

/// A duration without its space (`15.4s`, `59.7min`): a narrow column
/// whose cells are one word each.
fn short_duration(ns: u64) -> String {
    report::duration_ns(ns).replace(' ', "")
}

/// One column: its header, its cells, and whether it aligns right.
struct Column {
    header: String,
    cells: Vec<String>,
    right: bool,
    /// 0: always shown; then the order in which columns are added as
    /// width allows.
    priority: u8,
}

impl Column {
    fn new(header: impl Into<String>, cells: Vec<String>, right: bool, priority: u8) -> Column {
        Column { header: header.into(), cells, right, priority }
    }

    fn width(&self) -> usize {
        self.cells.iter().map(|c| c.chars().count()).chain([self.header.chars().count()]).max().unwrap_or(0)
    }
}

/// The table's columns, left to right.
fn columns(flows: &[FlowSummary]) -> Vec<Column> {
    let of = |f: &dyn Fn(&FlowSummary) -> String| flows.iter().map(f).collect::<Vec<_>>();
    let (bytes_unit, bytes) = report::bytes_column_unit(&flows.iter().map(|f| f.bytes).collect::<Vec<_>>());
    let (now_unit, now) =
        report::bitrate_column_unit(&flows.iter().map(|f| f.current_bytes_per_s.unwrap_or(0.0)).collect::<Vec<_>>());
    let now =
        now.into_iter().zip(flows).map(|(c, f)| if f.current_bytes_per_s.is_some() { c } else { "-".into() }).collect();
    let (mean_unit, mean) = report::bitrate_column_unit(&flows.iter().map(|f| f.mean_bytes_per_s).collect::<Vec<_>>());
    vec![
        Column::new("id", of(&|f| f.id.to_string()), true, 0),
        Column::new("proto", of(&|f| flowtable_sw::key::proto_name(f.proto).to_string()), false, 1),
        Column::new("client", of(&|f| report::endpoint(f.proto, &f.src, f.sport)), false, 0),
        Column::new(
            "server",
            of(&|f| report::server_text(f.proto, &f.dst, f.dport, f.icmp_type, f.icmp_code)),
            false,
            0,
        ),
        Column::new("where", of(&where_text), false, 0),
        Column::new("stage", of(&|f| f.stage.as_str().to_string()), false, 4),
        Column::new("action", of(&|f| f.action.as_ref().map_or_else(|| "-".into(), super::action_text)), false, 6),
        Column::new(
            "rule/label",
            of(&|f| f.label.clone().or_else(|| f.class.clone()).unwrap_or_else(|| "-".into())),
            false,
            9,
        ),
        Column::new("packets", report::count_column(&flows.iter().map(|f| f.packets).collect::<Vec<_>>()), true, 2),
        Column::new(bytes_unit, bytes, true, 0),
        Column::new("NIC", of(&|f| super::nic_share(f.hw_packets, f.packets)), true, 7),
        Column::new(format!("now {now_unit}"), now, true, 0),
        Column::new(format!("mean {mean_unit}"), mean, true, 3),
        Column::new("used", of(&|f| short_duration(f.used_ns)), true, 5),
        Column::new("expires", of(&|f| short_duration(f.expires_in_ns)), true, 8),
        Column::new("age", of(&|f| short_duration(f.age_ns)), true, 10),
    ]
}

/// Which columns fit in `width` cells (borders and one space between
/// columns taken off): every priority-0 column, then the others by
/// priority, each if it fits whole. Indexes in display order.
fn fit(cols: &[Column], width: usize) -> Vec<usize> {
    let avail = width.saturating_sub(2);
    let mut keep: Vec<usize> = (0..cols.len()).filter(|i| cols[*i].priority == 0).collect();
    let mut used: usize = keep.iter().map(|i| cols[*i].width()).sum::<usize>() + keep.len().saturating_sub(1);
    let mut rest: Vec<usize> = (0..cols.len()).filter(|i| cols[*i].priority != 0).collect();
    rest.sort_by_key(|i| cols[*i].priority);
    for i in rest {
        let w = cols[i].width() + 1;
        if used + w <= avail {
            used += w;
            keep.push(i);
        }
    }
    keep.sort_unstable();
    keep
}

fn render(frame: &mut Frame, view: &View, sort: SortKey, socket: &str, interval: Duration) {
    let [top, table_area] = Layout::vertical([Constraint::Length(4), Constraint::Min(1)]).areas(frame.area());
    let wide = frame.area().width >= 120;
    let mut title = format!(
        "flowtable watch  refresh #{} every {:.1} s  sort: {} (s: sort, q: quit)",
        view.refreshes,
        interval.as_secs_f64(),
        sort.as_str()
    );
    if wide {
        title.push_str(&format!("  {socket}"));
    }
    let mut lines = vec![Line::from(title)];
    if let Some(s) = &view.stats {
        let by = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {}", report::count(*v))).collect::<Vec<_>>()
        };
        let mut flows = format!(
            "flows {} live ({:.1}% full), rules {} on {} ({} queued)",
            s.flows.live,
            s.flows.fill * 100.0,
            s.rules.live,
            s.rules.backend,
            s.rules.queued
        );
        if wide {
            flows.push_str(&format!(": {}", by(&s.flows.by_stage).join(", ")));
        }
        lines.push(Line::from(flows));
        lines.push(Line::from(format!(
            "packets {} at {}: NIC {}, software {}; ended {}, refused {}",
            report::count(s.packets.received),
            report::rate(s.packets.packets_per_s, "pkt"),
            report::count(s.packets.nic),
            report::count(s.packets.software),
            report::count(s.flows.ended),
            report::count(s.refusals.values().sum())
        )));
    }
    if let Some(e) = &view.error {
        lines.push(Line::from(format!("error: {e}")).style(Style::default().add_modifier(Modifier::BOLD)));
    }
    frame.render_widget(Paragraph::new(lines), top);
    // One line a flow, as many as the table has room for (its two borders
    // and header taken off); the columns are sized for those shown.
    let room = usize::from(table_area.height).saturating_sub(3);
    let flows: &[FlowSummary] = view.page.as_ref().map_or(&[], |p| &p.flows[..p.flows.len().min(room)]);
    let cols = columns(flows);
    let shown = fit(&cols, usize::from(table_area.width));
    let widths = widths(&cols, &shown, usize::from(table_area.width));
    let cell = |c: &Column, text: &str, width: usize| {
        // An end too long for its column (IPv6 on a narrow screen) is cut
        // where it shows, on its one line, never wrapped.
        let text = ratatui::text::Text::from(Line::from(fit_cell(text, width)));
        if c.right {
            text.right_aligned()
        } else {
            text
        }
    };
    let rows: Vec<Row> = (0..flows.len())
        .map(|r| Row::new(shown.iter().zip(&widths).map(|(&i, &w)| cell(&cols[i], &cols[i].cells[r], w))))
        .collect();
    let widths: Vec<Constraint> = widths.iter().map(|w| Constraint::Length(*w as u16)).collect();
    let header = Row::new(shown.iter().map(|&i| cell(&cols[i], &cols[i].header, usize::MAX)))
        .style(Style::default().add_modifier(Modifier::BOLD));
    let title = view.page.as_ref().map_or_else(String::new, |p| format!(" top {} of {} flows ", flows.len(), p.total));
    frame.render_widget(Table::new(rows, widths).header(header).block(Block::bordered().title(title)), table_area);
}

/// The least an end cut to fit is given beside a whole one: room for
/// the start of an IPv6 address, the `…` and the port.
const MIN_END: usize = 16;

/// The width of each shown column: its widest cell, except that the two
/// ends share what the others leave when they don't fit whole.
fn widths(cols: &[Column], shown: &[usize], width: usize) -> Vec<usize> {
    let mut w: Vec<usize> = shown.iter().map(|&i| cols[i].width()).collect();
    let ends: Vec<usize> =
        (0..shown.len()).filter(|k| matches!(cols[shown[*k]].header.as_str(), "client" | "server")).collect();
    let others: usize = (0..shown.len()).filter(|k| !ends.contains(k)).map(|k| w[k]).sum();
    let room = width.saturating_sub(2 + shown.len().saturating_sub(1) + others);
    if ends.len() == 2 && w[ends[0]] + w[ends[1]] > room {
        let half = room / 2;
        // The narrower end keeps its width if the other is left room for
        // a cut address and its port (MIN_END); the other takes the rest.
        let (a, b) = (ends[0], ends[1]);
        let keeps = |narrow: usize, wide: usize| narrow <= half || room.saturating_sub(narrow) >= MIN_END.min(wide);
        if w[a] <= w[b] && keeps(w[a], w[b]) {
            w[b] = room - w[a];
        } else if w[b] < w[a] && keeps(w[b], w[a]) {
            w[a] = room - w[b];
        } else {
            w[a] = half.max(1);
            w[b] = (room - half).max(1);
        }
    }
    w
}

/// `text` in at most `width` characters: whole when it fits, else cut
/// with a visible `…`, an endpoint keeping its port (`[fd00:f10…]:40838`).
fn fit_cell(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let port = port_suffix(text).filter(|p| p.chars().count() + 2 <= width).unwrap_or("");
    let head: String = text.chars().take(width - 1 - port.chars().count()).collect();
    format!("{head}…{port}")
}

/// The `:PORT` (`]:PORT` after an IPv6 address) an endpoint ends with.
fn port_suffix(text: &str) -> Option<&str> {
    let at = if text.starts_with('[') {
        text.rfind("]:")?
    } else if text.matches(':').count() == 1 {
        text.rfind(':')?
    } else {
        return None;
    };
    let port = &text[at..].trim_start_matches(']')[1..];
    (!port.is_empty() && port.chars().all(|c| c.is_ascii_digit())).then(|| &text[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_too_wide_share_the_room() {
        let cols = [
            Column::new("id", vec!["4294967358".into()], true, 0),
            Column::new("client", vec!["[fd00:f10:0:1:b54c:da58:fbbe:e882]:40838".into()], false, 0),
            Column::new("server", vec!["[2001:db8:5::1d0]:5201".into()], false, 0),
            Column::new("MiB", vec!["4.4".into()], true, 0),
        ];
        let shown = [0, 1, 2, 3];
        // 80 wide: 2 borders, 3 spaces, id 10, MiB 3 leave 62 for the ends.
        assert_eq!(widths(&cols, &shown, 80), vec![10, 40, 22, 3]);
        // The server whole while the client keeps 16.
        assert_eq!(widths(&cols, &shown, 60), vec![10, 20, 22, 3]);
        assert_eq!(widths(&cols, &shown, 50), vec![10, 16, 16, 3]);
        // The narrower end whole when it fits in half.
        assert_eq!(widths(&cols, &shown, 75), vec![10, 35, 22, 3]);
    }

    #[test]
    fn ends_too_wide_are_cut_visibly_on_one_line_keeping_the_port() {
        let v6 = "[fd00:f10:0:1:b54c:da58:fbbe:e882]:40838";
        assert_eq!(fit_cell(v6, 40), v6);
        assert_eq!(fit_cell(v6, 17), "[fd00:f10…]:40838");
        assert_eq!(fit_cell(v6, 17).chars().count(), 17);
        assert_eq!(fit_cell("10.100.200.1:443", 12), "10.100.…:443");
        // Too narrow for the port: cut at the end.
        assert_eq!(fit_cell(v6, 6), "[fd00…");
        assert_eq!(fit_cell("10.0.0.1:80", 20), "10.0.0.1:80");
        assert_eq!(fit_cell("192.0.2.1 type 8 code 0 id 7", 12), "192.0.2.1 t…");
        assert_eq!(port_suffix("[2001:db8::1]:53"), Some("]:53"));
        assert_eq!(port_suffix("2001:db8::1"), None, "a bare IPv6 address has no port");
    }

    fn col(w: usize, priority: u8) -> Column {
        Column::new("x".repeat(w), vec![], false, priority)
    }

    #[test]
    fn columns_are_added_by_priority_while_they_fit() {
        let cols = [col(10, 0), col(5, 2), col(10, 0), col(8, 1), col(30, 3)];
        // The must-haves (10 + 1 + 10) always; then priority 1 (8), then 2 (5); 30 never fits 60.
        assert_eq!(fit(&cols, 2 + 21), vec![0, 2]);
        assert_eq!(fit(&cols, 2 + 21 + 9), vec![0, 2, 3]);
        assert_eq!(fit(&cols, 2 + 21 + 9 + 6), vec![0, 1, 2, 3]);
        assert_eq!(fit(&cols, 60), vec![0, 1, 2, 3]);
        assert_eq!(fit(&cols, 2 + 21 + 9 + 6 + 31), vec![0, 1, 2, 3, 4]);
        // Narrower than the must-haves: they stay, nothing else.
        assert_eq!(fit(&cols, 10), vec![0, 2]);
    }
}
