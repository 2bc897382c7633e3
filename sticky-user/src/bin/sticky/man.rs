//! `sticky man`: one man page, sticky(1), with a section for every subcommand.
//!
//! clap_mangen renders one command per page and lists the subcommands as `sticky-run(1)` and so
//! on, pages that are not installed. So the page renders the top-level command, then under
//! COMMANDS each visible subcommand's synopsis, description and options, from the same clap
//! definitions `--help` prints.

use std::io::{self, Write};

use clap_mangen::Man;

/// The lines clap_mangen's roff writer puts before every piece it renders.
const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];

/// Writes the man page of `cmd` and all its visible subcommands (not `help`).
pub fn render(cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Sets each subcommand's bin name ("sticky run"), which its synopsis shows.
    cmd.build();
    let man = Man::new(cmd.clone());
    man.render_title(out)?;
    for render in [
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ] {
        out.write_all(piece(&man, render, false)?.as_bytes())?;
    }
    writeln!(out, ".SH COMMANDS")?;
    writeln!(out, "Each command also prints its own part with \\fBsticky COMMAND \\-\\-help\\fR.")?;
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let man = Man::new(sub.clone());
        writeln!(out, ".SS \"sticky {}\"", sub.get_name())?;
        out.write_all(piece(&man, Man::render_synopsis_section, true)?.as_bytes())?;
        out.write_all(piece(&man, Man::render_description_section, true)?.as_bytes())?;
        if sub.get_arguments().any(|arg| !arg.is_hide_set()) {
            out.write_all(piece(&man, Man::render_options_section, true)?.as_bytes())?;
        }
    }
    out.write_all(piece(&man, Man::render_version_section, false)?.as_bytes())
}

/// One section rendered by clap_mangen, without the preamble (the title brought it); in a
/// subcommand's part (`sub`) its `.SH` heading becomes a paragraph break.
fn piece(
    man: &Man,
    render: fn(&Man, &mut dyn Write) -> io::Result<()>,
    sub: bool,
) -> io::Result<String> {
    let mut buf = Vec::new();
    render(man, &mut buf)?;
    let text = String::from_utf8(buf).map_err(io::Error::other)?;
    Ok(text
        .lines()
        .filter(|line| !PREAMBLE.contains(line))
        .map(|line| match line.strip_prefix(".SH ") {
            Some(_) if sub => ".PP".to_owned(),
            _ => line.to_owned(),
        })
        .fold(String::new(), |acc, line| acc + &line + "\n"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use crate::Cli;

    fn page() -> String {
        let mut out = Vec::new();
        super::render(Cli::command(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_visible_subcommand_has_its_section_with_its_options() {
        let page = page();
        assert!(page.starts_with(".ie ") && page.contains(".TH sticky 1"), "{page}");
        for sub in Cli::command().get_subcommands() {
            let section = format!(".SS \"sticky {}\"", sub.get_name());
            assert_eq!(page.contains(&section), !sub.is_hide_set(), "{section}");
        }
        assert!(!page.contains(".SS \"sticky help\""), "{page}");
        // Options of `run` and of the control commands, with their defaults.
        assert!(page.contains("\\-\\-prefix\\-v4"), "{page}");
        assert!(page.contains("/run/sticky/sticky.sock"), "{page}");
        // No pointer to separate pages that are not installed.
        assert!(!page.contains("sticky\\-run(1)"), "{page}");
        assert_eq!(page.matches(".TH ").count(), 1);
        assert_eq!(page.matches(".ds Aq").count(), 2, "the preamble once");
    }
}
