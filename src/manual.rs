//! Shell completions and manual pages, generated from the command line's
//! own clap definition (`flowtable completions`, `flowtable man`), so that
//! neither can drift from `--help`. The Debian package is built with their
//! output (packaging/build-deb.sh).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The completion script for `shell`, for a command named as `cmd` is.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// The page of the command reached through `path` (e.g. `["bench",
/// "replay"]` gives flowtable-bench-replay(1)), or the top page if `path`
/// is empty, as roff.
pub fn page(cmd: clap::Command, path: &[String]) -> Result<Vec<u8>, String> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Built, the subcommands carry their display names (`flowtable-run`),
    // which name their pages and the references between them.
    cmd.build();
    let mut at = &cmd;
    for (i, name) in path.iter().enumerate() {
        at = at.find_subcommand(name).ok_or_else(|| {
            let known: Vec<&str> = at.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| s.get_name()).collect();
            format!("man: `{}` has no command {name:?}; it has {}", shown(&path[..i]), known.join(", "))
        })?;
    }
    let mut out = Vec::new();
    render(&cmd, at, &mut out).map_err(|e| format!("man: rendering the page: {e}"))?;
    Ok(out)
}

/// One page: clap_mangen's sections, every page's footer naming
/// flowtable's version (a subcommand has none of its own), and on the top
/// page the files the daemon and the package use.
fn render(top: &clap::Command, cmd: &clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    let source = format!("flowtable {}", top.get_version().unwrap_or_default());
    let man = clap_mangen::Man::new(cmd.clone()).source(source).manual("flowtable manual");
    // clap_mangen's own order (Man::render), but for the text after the
    // options, which it gives as one paragraph that roff refills: `flows`'s
    // is the filter grammar, laid out in lines and columns.
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    if let Some(text) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        out.write_all(preformatted(&text.to_string()).as_bytes())?;
    }
    if cmd.get_version().or_else(|| cmd.get_long_version()).is_some() {
        man.render_version_section(out)?;
    }
    if cmd.get_author().is_some() {
        man.render_authors_section(out)?;
    }
    if std::ptr::eq(top, cmd) {
        out.write_all(FILES.as_bytes())?;
    }
    Ok(())
}

/// Text laid out by hand (the filter grammar: examples, a table of
/// fields) as a section of its own whose lines roff keeps as they are
/// (`.nf`), named by its first word when that is a heading (`FILTER:`).
fn preformatted(text: &str) -> String {
    let (name, body) = match text.split_once(':') {
        Some((head, rest)) if !head.is_empty() && head.chars().all(|c| c.is_ascii_uppercase()) => {
            (head.to_string(), rest.trim_start_matches(' '))
        }
        _ => ("NOTES".to_string(), text),
    };
    // What followed the heading starts the section: a sentence.
    let mut chars = body.chars();
    let body: String = chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
    let mut roff = roff::Roff::new();
    roff.control("SH", [name.as_str()]);
    roff.control("nf", []);
    for line in body.lines() {
        roff.text([roff::roman(line)]);
    }
    roff.control("fi", []);
    roff.to_roff()
}

/// The top page's FILES and SEE ALSO sections, in roff.
const FILES: &str = r#".SH FILES
.TP
\fI/etc/flowtable/flowtable.json\fR
The configuration the systemd unit runs the daemon with (\fBflowtable config example\fR prints a full one; \fBflowtable config check\fR checks it).
.TP
\fI/run/flowtable/flowtable.sock\fR
The control socket: where \fBflowtable run\fR listens and the clients (\fBflows\fR, \fBstats\fR, \fBwatch\fR, ...) look unless told \fB\-\-socket\fR or \fB\-\-config\fR.
.TP
\fI/var/log/flowtable/\fR
Where the unit lets the daemon write its records file (\fBrecords.path\fR).
.TP
\fI/usr/lib/systemd/system/flowtable.service\fR
The systemd unit: \fBsystemctl reload flowtable\fR sends SIGHUP, which reloads the classifier and timeouts.
.SH SEE ALSO
\fBtc\-flower\fR(8), \fBconntrack\fR(8), \fBsystemd.exec\fR(5)
"#;

/// Writes every page, flowtable.1 and one per command and subcommand
/// (flowtable-run.1, flowtable-bench-replay.1, ...), into `dir`; returns
/// their paths, sorted.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    fn write(top: &clap::Command, cmd: &clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) -> Result<(), String> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(top, sub, dir, pages)?;
        }
        let path = dir.join(clap_mangen::Man::new(cmd.clone()).get_filename());
        let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        render(top, cmd, &mut file).map_err(|e| format!("{}: {e}", path.display()))?;
        pages.push(path);
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    write(&cmd, &cmd, dir, &mut pages)?;
    pages.sort();
    Ok(pages)
}

/// `flowtable man`: one page on stdout, or every page into `dir`.
pub fn man(cmd: clap::Command, path: &[String], dir: Option<&Path>) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    match dir {
        Some(dir) => {
            for p in write_pages(cmd, dir)? {
                writeln!(stdout, "{}", p.display()).map_err(|e| format!("writing to stdout: {e}"))?;
            }
        }
        None => stdout.write_all(&page(cmd, path)?).map_err(|e| format!("writing to stdout: {e}"))?,
    }
    stdout.flush().map_err(|e| format!("writing to stdout: {e}"))
}

fn shown(path: &[String]) -> String {
    std::iter::once("flowtable").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}
