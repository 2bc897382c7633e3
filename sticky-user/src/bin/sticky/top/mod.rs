//! `sticky top`: the running loader, live. Reads `status` over the control socket every
//! second and shows each slot's worker, state, connections per second (the difference of the
//! program's counters between two reads), accept queue, table share, restarts, uptime, CPU,
//! memory and `STATUS=` text. `r` restarts the selected slot (a rolling restart of that slot,
//! through the control socket), `k` sends its worker SIGKILL, each after a `y`.
//!
//! With stdout not a terminal it prints one snapshot as a plain table (two reads a second
//! apart, for the rates) and exits.

mod app;
mod model;
mod view;

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
};
use sticky_user::{
    control::{self, Request, Response},
    sync::unix_now,
};

use self::{
    app::{App, Command, Key},
    model::{Reading, header, plain, rows},
};
use crate::ctl::ControlArgs;

/// How often the view reads the status again.
const REFRESH: Duration = Duration::from_secs(1);

/// Runs the live view, or prints a snapshot when stdout is no terminal.
pub fn run(args: &ControlArgs) -> anyhow::Result<()> {
    let path = args.control.clone();
    if !std::io::stdout().is_terminal() {
        return snapshot(&path);
    }
    // Fails early, before the terminal changes, when no loader answers.
    let first = read(&path)?;
    let mut terminal = ratatui::try_init()?;
    let result = live(&mut terminal, path, first);
    ratatui::try_restore()?;
    result
}

/// One read of the status.
fn read(path: &Path) -> anyhow::Result<Reading> {
    match control::request(path, &Request::Status)? {
        Response::Status(status) => Ok(Reading { status: *status, at: Instant::now() }),
        Response::Error { message } => bail!("{message}"),
        Response::Done { message } => bail!("unexpected answer: {message}"),
    }
}

/// Prints the header and the table from two reads a second apart.
fn snapshot(path: &Path) -> anyhow::Result<()> {
    let first = read(path)?;
    thread::sleep(REFRESH);
    let second = read(path)?;
    let rows = rows(Some(&first), &second);
    print!("{}", plain(&header(&second.status, &rows, unix_now()), &rows));
    Ok(())
}

/// The event loop: a read every [`REFRESH`], a frame after each read or key, and requests
/// (which may take as long as a worker needs to get ready) on threads of their own.
fn live(terminal: &mut DefaultTerminal, path: PathBuf, first: Reading) -> anyhow::Result<()> {
    let mut app = App::default();
    let first_rows = rows(None, &first);
    app.update(header(&first.status, &first_rows, unix_now()), first_rows);
    let mut previous = first;
    let mut next_read = Instant::now() + REFRESH;
    let (done, results) = mpsc::channel::<String>();
    loop {
        if Instant::now() >= next_read {
            next_read = Instant::now() + REFRESH;
            match read(&path) {
                Ok(reading) => {
                    let rows = rows(Some(&previous), &reading);
                    app.update(header(&reading.status, &rows, unix_now()), rows);
                    previous = reading;
                }
                Err(err) => app.message = Some(format!("{err:#}")),
            }
        }
        while let Ok(message) = results.try_recv() {
            app.message = Some(message);
        }
        terminal.draw(|frame| view::draw(frame, &app))?;
        if !event::poll(next_read.saturating_duration_since(Instant::now()))? {
            continue;
        }
        // A resize needs nothing but the next frame, which fits the new size.
        let Event::Key(key) = event::read()? else { continue };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let key = match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
            KeyCode::Char(c) => Key::Char(c),
            KeyCode::Up => Key::Up,
            KeyCode::Down => Key::Down,
            KeyCode::Esc => Key::Escape,
            _ => Key::Other,
        };
        match app.on_key(key) {
            Command::None => {}
            Command::Quit => return Ok(()),
            Command::Restart { slot } => {
                app.message = Some(format!("restarting slot {slot}…"));
                let (path, done) = (path.clone(), done.clone());
                thread::spawn(move || {
                    let answer = match control::request(&path, &Request::RestartSlot { slot }) {
                        Ok(Response::Done { message }) => message,
                        Ok(Response::Error { message }) => format!("restart failed: {message}"),
                        Ok(Response::Status(_)) => "unexpected answer".into(),
                        Err(err) => format!("restart failed: {err}"),
                    };
                    let _ = done.send(answer);
                });
            }
            Command::Kill { slot, pid } => {
                app.message = Some(match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
                    Ok(()) => format!("sent SIGKILL to worker {pid} of slot {slot}"),
                    Err(err) => format!("cannot kill worker {pid}: {err}"),
                });
            }
        }
    }
}
