//! Draws `sticky top`: the header lines, the table of slots, and a line of keys (or the
//! pending question, or the last message). Fits 80×24; a smaller terminal shows fewer rows,
//! and the table scrolls to keep the selected slot in view.

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table, TableState},
};

use super::{
    app::App,
    model::{Column, cells},
};

/// The keys, shown when there is nothing else to say.
const KEYS: &str = "q quit · ↑↓ select · s/S/1-9 sort · r restart · k kill";

/// Draws `app` on the whole frame.
pub fn draw(frame: &mut Frame, app: &App) {
    let header_lines = app.header.len() as u16;
    let [header, table, footer] = Layout::vertical([
        Constraint::Length(header_lines),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let lines: Vec<Line> = app.header.iter().map(|line| Line::raw(line.as_str())).collect();
    frame.render_widget(Paragraph::new(lines), header);

    let titles = Column::ALL.map(|column| aligned(column.title().to_owned(), column));
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let rows = app.rows.iter().map(|row| {
        let cells = cells(row);
        TableRow::new(Column::ALL.iter().zip(cells).map(|(&column, cell)| aligned(cell, column)))
    });
    let widths = Column::ALL.map(|column| match column.width() {
        0 => Constraint::Fill(1),
        width => Constraint::Length(width),
    });
    let table_widget = Table::new(rows, widths)
        .header(TableRow::new(titles).style(bold))
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(app.selected_index());
    frame.render_stateful_widget(table_widget, table, &mut state);

    let order = if app.descending { '▼' } else { '▲' };
    let keys = || format!("sorted by {}{order} · {KEYS}", app.sort.title());
    let bottom = app.question().or_else(|| app.message.clone()).unwrap_or_else(keys);
    frame.render_widget(Paragraph::new(bottom).style(bold), footer);
}

/// A cell, right-aligned unless the column holds text.
fn aligned(text: String, column: Column) -> Cell<'static> {
    let line = Line::raw(text);
    Cell::from(if column.is_text() { line } else { line.right_aligned() })
}
