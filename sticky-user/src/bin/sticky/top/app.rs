//! `sticky top`'s state between frames: the rows, the sort, the selected slot, a pending
//! confirmation, the last message; and what each key does, as a pure function.

use super::model::{Column, Row, sort};

/// What the event loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Nothing beyond drawing again.
    None,
    /// Leave, restoring the terminal.
    Quit,
    /// Replace slot `slot`'s worker (a rolling restart of that slot).
    Restart { slot: u32 },
    /// SIGKILL to worker `pid` of slot `slot`.
    Kill { slot: u32, pid: u32 },
}

/// An action waiting for `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Restart { slot: u32, pid: Option<u32> },
    Kill { slot: u32, pid: u32 },
}

/// A key, as far as `sticky top` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    CtrlC,
    Up,
    Down,
    Escape,
    Other,
}

/// What is shown, and the choices the user made.
pub struct App {
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    pub sort: Column,
    pub descending: bool,
    /// The selected slot (kept across refreshes and sorts).
    pub selected: Option<u32>,
    pub pending: Option<Pending>,
    pub message: Option<String>,
}

impl Default for App {
    fn default() -> Self {
        Self {
            header: Vec::new(),
            rows: Vec::new(),
            sort: Column::Slot,
            descending: false,
            selected: None,
            pending: None,
            message: None,
        }
    }
}

impl App {
    /// New rows from a read; keeps the sort and the selection (the first row if its slot went).
    pub fn update(&mut self, header: Vec<String>, rows: Vec<Row>) {
        self.header = header;
        self.rows = rows;
        sort(&mut self.rows, self.sort, self.descending);
        if self.selected_index().is_none() {
            self.selected = self.rows.first().map(|row| row.slot);
        }
    }

    /// The selected row's index in [`App::rows`].
    pub fn selected_index(&self) -> Option<usize> {
        let slot = self.selected?;
        self.rows.iter().position(|row| row.slot == slot)
    }

    /// Handles `key`.
    pub fn on_key(&mut self, key: Key) -> Command {
        if key == Key::CtrlC {
            return Command::Quit;
        }
        self.message = None;
        if let Some(pending) = self.pending.take() {
            if key != Key::Char('y') {
                self.message = Some("cancelled".into());
                return Command::None;
            }
            return match pending {
                Pending::Restart { slot, .. } => Command::Restart { slot },
                Pending::Kill { slot, pid } => Command::Kill { slot, pid },
            };
        }
        match key {
            Key::Char('q') => return Command::Quit,
            Key::Up => self.step(-1),
            Key::Down => self.step(1),
            Key::Char('s') => self.resort(self.sort.next(), self.descending),
            Key::Char('S') => self.resort(self.sort, !self.descending),
            Key::Char(c @ '1'..='9') => {
                let column = Column::ALL[c as usize - '1' as usize];
                self.resort(column, self.descending);
            }
            Key::Char('r') => {
                let row = self.selected_row();
                self.pending = row.map(|row| Pending::Restart { slot: row.slot, pid: row.pid });
            }
            Key::Char('k') => match self.selected_row() {
                Some(Row { slot, pid: Some(pid), .. }) => {
                    self.pending = Some(Pending::Kill { slot: *slot, pid: *pid });
                }
                Some(row) => self.message = Some(format!("slot {} has no worker", row.slot)),
                None => {}
            },
            _ => {}
        }
        Command::None
    }

    /// The question a pending action asks.
    pub fn question(&self) -> Option<String> {
        Some(match self.pending? {
            Pending::Restart { slot, pid } => {
                let pid = pid.map_or(String::new(), |pid| format!(" (pid {pid})"));
                format!("restart slot {slot}{pid}, its new worker first? y/n")
            }
            Pending::Kill { slot, pid } => format!("SIGKILL worker {pid} of slot {slot}? y/n"),
        })
    }

    fn selected_row(&self) -> Option<&Row> {
        self.selected_index().map(|index| &self.rows[index])
    }

    fn step(&mut self, by: isize) {
        if self.rows.is_empty() {
            return;
        }
        let index = self.selected_index().unwrap_or(0) as isize + by;
        let index = index.clamp(0, self.rows.len() as isize - 1) as usize;
        self.selected = Some(self.rows[index].slot);
    }

    fn resort(&mut self, column: Column, descending: bool) {
        self.sort = column;
        self.descending = descending;
        sort(&mut self.rows, column, descending);
        self.message = Some(format!(
            "sorted by {} {}",
            column.title(),
            if descending { "descending" } else { "ascending" }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(slot: u32, pid: Option<u32>) -> Row {
        Row {
            slot,
            pid,
            state: "ready".into(),
            rate: Some(f64::from(slot)),
            queue: None,
            share: None,
            restarts: 0,
            uptime: None,
            cpu: None,
            rss: None,
            status: String::new(),
        }
    }

    fn app() -> App {
        let mut app = App::default();
        app.update(vec![], vec![row(0, Some(10)), row(1, Some(11)), row(2, None)]);
        app
    }

    #[test]
    fn restart_and_kill_need_a_confirmation() {
        let mut app = app();
        assert_eq!(app.on_key(Key::Down), Command::None);
        assert_eq!(app.on_key(Key::Char('r')), Command::None);
        assert_eq!(app.question().unwrap(), "restart slot 1 (pid 11), its new worker first? y/n");
        assert_eq!(app.on_key(Key::Char('y')), Command::Restart { slot: 1 });
        assert_eq!(app.on_key(Key::Char('k')), Command::None);
        assert_eq!(app.on_key(Key::Char('n')), Command::None, "anything but y cancels");
        assert_eq!(app.pending, None);
        app.on_key(Key::Char('k'));
        assert_eq!(app.on_key(Key::Char('y')), Command::Kill { slot: 1, pid: 11 });
        app.on_key(Key::Down);
        app.on_key(Key::Char('k'));
        assert_eq!(app.pending, None, "slot 2 has no worker to kill");
        assert_eq!(app.on_key(Key::CtrlC), Command::Quit);
        assert_eq!(app.on_key(Key::Char('q')), Command::Quit);
    }

    #[test]
    fn the_selection_follows_its_slot_through_sorts_and_refreshes() {
        let mut app = app();
        app.on_key(Key::Down);
        app.on_key(Key::Char('S'));
        assert_eq!(app.rows.iter().map(|r| r.slot).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!((app.selected, app.selected_index()), (Some(1), Some(1)));
        app.on_key(Key::Char('4'));
        assert_eq!(app.sort, Column::Rate);
        app.update(vec![], vec![row(0, Some(10)), row(2, None)]);
        assert_eq!(app.selected, Some(2), "a slot that went selects the first row");
        app.on_key(Key::Up);
        app.on_key(Key::Up);
        assert_eq!(app.selected_index(), Some(0), "the selection stops at the top");
    }
}
