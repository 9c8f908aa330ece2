//! `flowtable watch`: a live view of the top flows, refreshed in place in
//! the terminal like `top`. Rates shown are measured between refreshes;
//! `s` changes the sort, `q` quits. If the daemon goes away the view says
//! so and keeps trying.

use super::{bitrate, endpoint, Client, Target};
use crate::control::{Command, FlowSummary, FlowsPage, SortKey, Stats};
use crate::report;
use flowtable_sw::FlowId;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: Target,
    /// Milliseconds between refreshes.
    #[arg(long, default_value_t = 1000)]
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
    /// Bytes per second since the previous refresh, by flow.
    rates: HashMap<FlowId, f64>,
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
    let mut view = View { stats: None, page: None, rates: HashMap::new(), refreshes: 0, error: None };
    let mut previous: HashMap<FlowId, (u64, u64)> = HashMap::new();
    let mut next_refresh = Instant::now();
    loop {
        if Instant::now() >= next_refresh {
            let rows = terminal.size().map(|s| s.height.saturating_sub(6)).unwrap_or(20).max(1) as usize;
            if client.is_none() {
                client = Client::connect(&path).ok();
            }
            match client.as_mut().map(|c| fetch(c, sort, a.filter.clone(), rows)) {
                Some(Ok((stats, page))) => {
                    let mut seen = HashMap::with_capacity(page.flows.len());
                    view.rates.clear();
                    for f in &page.flows {
                        if let Some((bytes, at)) = previous.get(&f.id) {
                            let dt = page.now_ns.saturating_sub(*at);
                            if dt > 0 {
                                view.rates.insert(f.id, f.bytes.saturating_sub(*bytes) as f64 * 1e9 / dt as f64);
                            }
                        }
                        seen.insert(f.id, (f.bytes, page.now_ns));
                    }
                    previous = seen;
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

fn row(f: &FlowSummary, rates: &HashMap<FlowId, f64>) -> Row<'static> {
    let offload = match &f.action {
        Some(a) => format!("{} {}", super::action_text(a), if f.placement == "none" { "queued" } else { &f.placement }),
        None => "-".into(),
    };
    Row::new(vec![
        f.id.to_string(),
        flowtable_sw::key::proto_name(f.proto).to_string(),
        endpoint(&f.src, f.sport),
        endpoint(&f.dst, f.dport),
        f.stage.as_str().to_string(),
        offload,
        f.label.clone().or_else(|| f.class.clone()).unwrap_or_else(|| "-".into()),
        report::count(f.packets),
        report::bytes(f.bytes),
        rates.get(&f.id).map_or_else(|| "-".into(), |r| bitrate(*r)),
        report::duration_ns(f.age_ns),
    ])
}

fn render(frame: &mut Frame, view: &View, sort: SortKey, socket: &str, interval: Duration) {
    let [top, table_area] = Layout::vertical([Constraint::Length(4), Constraint::Min(1)]).areas(frame.area());
    let mut lines = vec![Line::from(format!(
        "flowtable watch  {socket}  refresh #{} every {:.1} s  sort: {} (s: change sort, q: quit)",
        view.refreshes,
        interval.as_secs_f64(),
        sort.as_str()
    ))];
    if let Some(s) = &view.stats {
        let by = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter().map(|(k, v)| format!("{k} {}", report::count(*v))).collect::<Vec<_>>().join(", ")
        };
        lines.push(Line::from(format!(
            "flows {} live ({:.1}% full): {}   rules {} on {} ({} queued)",
            report::count(s.flows.live as u64),
            s.flows.fill * 100.0,
            by(&s.flows.by_stage),
            report::count(s.rules.live as u64),
            s.rules.backend,
            s.rules.queued
        )));
        lines.push(Line::from(format!(
            "packets {} at {}: NIC {}, software {}   ended {}   refusals {}",
            report::count(s.packets.received),
            report::rate(s.packets.rate_pps, "pkt"),
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
    let rows: Vec<Row> =
        view.page.as_ref().map(|p| p.flows.iter().map(|f| row(f, &view.rates)).collect()).unwrap_or_default();
    let title =
        view.page.as_ref().map_or_else(String::new, |p| format!(" top {} of {} flows ", p.flows.len(), p.total));
    let widths = [
        Constraint::Length(11),
        Constraint::Length(5),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Length(18),
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(13),
        Constraint::Length(8),
    ];
    let header = Row::new([
        "id",
        "proto",
        "client",
        "server",
        "stage",
        "offload",
        "rule/label",
        "packets",
        "bytes",
        "rate",
        "age",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    frame.render_widget(Table::new(rows, widths).header(header).block(Block::bordered().title(title)), table_area);
}
