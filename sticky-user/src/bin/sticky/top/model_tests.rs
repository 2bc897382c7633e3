use std::time::{Duration, Instant};

use sticky_user::{
    config::DispatchMode,
    control::{SlotState, SlotStatus, Status},
};

use super::*;

fn status(slots: Vec<SlotStatus>) -> Status {
    Status {
        pid: 7,
        loader: Default::default(),
        listen: vec!["[::]:3000".into()],
        dispatch: DispatchMode::Kernel,
        program_ids: vec![],
        migrates: true,
        fallback: 0,
        passed: 0,
        unreadable: 0,
        slots,
        last_reload: None,
        last_upgrade: None,
        client_address: None,
        quic: None,
    }
}

fn slot(slot: u32, pid: u32, connections: u64, cpu_secs: f64) -> SlotStatus {
    SlotStatus {
        slot,
        pid: Some(pid),
        connections,
        cpu_secs: Some(cpu_secs),
        state: Some(SlotState::Ready),
        in_table: true,
        ready: true,
        ..Default::default()
    }
}

fn readings() -> (Reading, Reading) {
    let at = Instant::now();
    let before = status(vec![slot(0, 100, 1000, 1.0), slot(1, 101, 50, 2.0)]);
    // Slot 1's worker was replaced: its CPU time is another process's.
    let after = status(vec![slot(0, 100, 1500, 1.5), slot(1, 202, 60, 0.1)]);
    (Reading { status: before, at }, Reading { status: after, at: at + Duration::from_secs(2) })
}

#[test]
fn rates_are_the_difference_of_two_reads_per_second() {
    let (before, after) = readings();
    let rows = rows(Some(&before), &after);
    assert_eq!(rows[0].rate, Some(250.0));
    assert_eq!(rows[0].cpu, Some(25.0));
    assert_eq!(rows[1].rate, Some(5.0));
    assert_eq!(rows[1].cpu, None, "another worker's CPU time is not compared");
    let first = super::rows(None, &after);
    assert!(first.iter().all(|row| row.rate.is_none() && row.cpu.is_none()));
}

#[test]
fn a_counter_that_went_back_gives_no_negative_rate() {
    let (before, after) = readings();
    let rows = rows(
        Some(&after),
        &Reading { status: before.status, at: after.at + Duration::from_secs(1) },
    );
    assert_eq!(rows[0].rate, Some(0.0));
}

#[test]
fn sorts_by_any_column_both_ways_ties_by_slot() {
    let (before, after) = readings();
    let mut rows = rows(Some(&before), &after);
    sort(&mut rows, Column::Rate, true);
    assert_eq!(rows.iter().map(|r| r.slot).collect::<Vec<_>>(), [0, 1]);
    sort(&mut rows, Column::Pid, true);
    assert_eq!(rows.iter().map(|r| r.slot).collect::<Vec<_>>(), [1, 0]);
    sort(&mut rows, Column::State, false);
    assert_eq!(rows.iter().map(|r| r.slot).collect::<Vec<_>>(), [0, 1], "ties by slot");
    for column in Column::ALL {
        sort(&mut rows, column, false);
    }
    assert_eq!(Column::Status.next(), Column::Slot);
}

#[test]
fn the_plain_table_has_a_heading_and_a_row_per_slot() {
    let (before, after) = readings();
    let rows = rows(Some(&before), &after);
    let header = header(&after.status, &rows, 0);
    let text = plain(&header, &rows);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), header.len() + 1 + 2, "{text}");
    assert!(header[2].starts_with("total 255 conn/s · 2/2 workers"), "{}", header[2]);
    let heading: Vec<&str> = lines[header.len()].split_whitespace().collect();
    assert_eq!(heading[..4], ["SLOT", "PID", "STATE", "CONN/S"]);
    let first: Vec<&str> = lines[header.len() + 1].split_whitespace().collect();
    assert_eq!(first[..4], ["0", "100", "ready", "250"]);
    assert!(lines.iter().all(|line| line.chars().count() <= 80), "{text}");
}

#[test]
fn short_durations_and_sizes() {
    assert_eq!(duration(42.0), "42s");
    assert_eq!(duration(307.0), "5m07s");
    assert_eq!(duration(10920.0), "3h02m");
    assert_eq!(duration(356400.0), "4d03h");
    assert_eq!(bytes(512), "512B");
    assert_eq!(bytes(12 * 1024 * 1024), "12M");
    assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5G");
}
