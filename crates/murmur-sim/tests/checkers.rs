//! The checkers on hand-written histories: each one must flag what it is
//! for, and nothing else.

use std::collections::BTreeMap;

use murmur_sim::check::{check, Finding};
use murmur_sim::history::{Ack, Function, History, HistoryEvent, OpType, ReadValue, Value};

/// Writes a history event by event.
#[derive(Default)]
struct Builder {
    history: History,
    next_op: usize,
}

impl Builder {
    fn event(
        &mut self,
        op: usize,
        kind: OpType,
        time_ms: u64,
        node: usize,
        f: Function,
        value: Value,
    ) {
        let ack = match (f, kind) {
            (Function::Read, _) => None,
            (_, OpType::Ok) => Some(Ack::Durable),
            (_, OpType::Info) => Some(Ack::Applied),
            _ => None,
        };
        self.history.push(HistoryEvent {
            op,
            kind,
            time_ms,
            node,
            f,
            value,
            ack,
            error: None,
        });
    }

    /// A write invoked at `at` that completes with `outcome` at `done`.
    fn write(&mut self, at: u64, done: u64, outcome: OpType, f: Function, value: Value) -> usize {
        let op = self.next_op;
        self.next_op += 1;
        self.event(op, OpType::Invoke, at, 0, f, value.clone());
        self.event(op, outcome, done, 0, f, value);
        op
    }

    fn read(&mut self, at: u64, node: usize, final_read: bool, seen: ReadValue) {
        let op = self.next_op;
        self.next_op += 1;
        let invoke = Value::Read {
            doc: 0,
            final_read,
            seen: None,
        };
        self.event(op, OpType::Invoke, at, node, Function::Read, invoke);
        let ok = Value::Read {
            doc: 0,
            final_read,
            seen: Some(Box::new(seen)),
        };
        self.event(op, OpType::Ok, at, node, Function::Read, ok);
    }

    fn add(&mut self, at: u64, done: u64, outcome: OpType, element: u64) {
        self.write(
            at,
            done,
            outcome,
            Function::Add,
            Value::Element { doc: 0, element },
        );
    }

    fn findings(&self) -> Vec<Finding> {
        check(&self.history, Vec::new()).findings
    }
}

fn set(elements: &[u64]) -> ReadValue {
    ReadValue {
        set: elements.to_vec(),
        ..ReadValue::default()
    }
}

fn checkers(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.checker.as_str()).collect()
}

// ----- set-full ------------------------------------------------------------

#[test]
fn set_full_an_acknowledged_element_missing_from_the_last_reads_is_lost() {
    let mut b = Builder::default();
    b.add(0, 10, OpType::Ok, 1);
    b.add(0, 10, OpType::Ok, 2);
    b.read(20, 1, false, set(&[1, 2]));
    b.read(30, 1, true, set(&[1]));
    let report = check(&b.history, Vec::new());
    assert_eq!(report.set.lost, vec![2]);
    assert_eq!(checkers(&report.findings), vec!["set"]);
}

#[test]
fn set_full_an_element_seen_again_after_a_miss_is_stable_and_stale() {
    let mut b = Builder::default();
    b.add(0, 10, OpType::Ok, 1);
    b.read(15, 1, false, set(&[]));
    b.read(40, 2, false, set(&[]));
    b.read(50, 1, true, set(&[1]));
    let report = check(&b.history, Vec::new());
    assert!(report.valid, "{:?}", report.findings);
    assert_eq!((report.set.stable, report.set.stale), (1, 1));
    // Known at 10 (the ok), last missed at 40: 30 ms stale.
    assert_eq!(report.set.stable_latency_ms.max, 30);
    assert_eq!(report.set.worst_stale, vec![(1, 30)]);
}

#[test]
fn set_full_an_indeterminate_add_may_vanish_but_is_counted() {
    let mut b = Builder::default();
    b.add(0, 5, OpType::Info, 1); // seen, then lost in a crash
    b.add(0, 5, OpType::Info, 2); // never seen
    b.add(0, 5, OpType::Info, 3); // survived
    b.read(10, 0, false, set(&[1]));
    b.read(20, 1, true, set(&[3]));
    let report = check(&b.history, Vec::new());
    assert!(report.valid, "{:?}", report.findings);
    assert_eq!(report.set.lost_unacked, vec![1]);
    assert_eq!(report.set.never_read, 1);
    assert_eq!(report.set.stable, 1);
}

#[test]
fn set_full_an_element_never_added_or_whose_add_failed_is_unexpected() {
    let mut b = Builder::default();
    b.add(0, 1, OpType::Fail, 5);
    b.read(10, 0, true, set(&[5, 99]));
    let report = check(&b.history, Vec::new());
    assert_eq!(report.set.unexpected, vec![5, 99]);
    assert!(!report.valid);
}

#[test]
fn set_full_counts_duplicates_within_one_read() {
    let mut b = Builder::default();
    b.add(0, 1, OpType::Ok, 7);
    b.read(10, 0, true, set(&[7, 7, 7]));
    let report = check(&b.history, Vec::new());
    assert_eq!(report.set.duplicated, BTreeMap::from([(7, 3)]));
    assert_eq!(checkers(&report.findings), vec!["set"]);
}

#[test]
fn set_full_reads_that_began_before_the_add_do_not_count_against_it() {
    let mut b = Builder::default();
    b.read(0, 0, false, set(&[]));
    b.add(5, 10, OpType::Ok, 1);
    b.read(20, 0, true, set(&[1]));
    let report = check(&b.history, Vec::new());
    assert!(report.valid);
    assert_eq!(report.set.stale, 0);
}

// ----- counter -------------------------------------------------------------

fn counter(value: i64) -> ReadValue {
    ReadValue {
        counter: Some(value),
        ..ReadValue::default()
    }
}

fn increment(b: &mut Builder, outcome: OpType, delta: i64) {
    b.write(
        0,
        5,
        outcome,
        Function::Increment,
        Value::Delta { doc: 0, delta },
    );
}

#[test]
fn counter_equals_acknowledged_deltas_plus_a_subset_of_indeterminate_ones() {
    for (final_value, valid) in [
        (5, true),
        (8, true),
        (3, true),
        (6, true),
        (4, false),
        (9, false),
    ] {
        let mut b = Builder::default();
        increment(&mut b, OpType::Ok, 5);
        increment(&mut b, OpType::Info, 3);
        increment(&mut b, OpType::Info, -2);
        increment(&mut b, OpType::Fail, 100);
        b.read(10, 0, true, counter(final_value));
        let report = check(&b.history, Vec::new());
        // Possible: 5 + {0, 3, -2, 1} = {5, 8, 3, 6}. 4 lies between the
        // smallest and largest but is no subset sum; 105 would need the
        // failed delta.
        assert_eq!(
            report.valid, valid,
            "final value {final_value}: {:?}",
            report.findings
        );
    }
}

#[test]
fn counter_a_read_during_the_chaos_must_be_reachable_from_earlier_deltas() {
    let mut b = Builder::default();
    increment(&mut b, OpType::Ok, 2);
    b.read(10, 1, false, counter(3));
    b.read(20, 1, true, counter(2));
    let findings = b.findings();
    assert_eq!(checkers(&findings), vec!["counter"], "{findings:?}");
}

// ----- register ------------------------------------------------------------

fn registers(key: u8, values: &[u64]) -> ReadValue {
    ReadValue {
        registers: BTreeMap::from([(key, values.to_vec())]),
        ..ReadValue::default()
    }
}

fn put(b: &mut Builder, outcome: OpType, value: u64, overwrote: &[u64]) {
    let value = Value::Register {
        doc: 0,
        key: 0,
        value,
        overwrote: overwrote.to_vec(),
    };
    b.write(0, 5, outcome, Function::Put, value);
}

#[test]
fn register_a_value_an_acknowledged_write_replaced_must_not_come_back() {
    let mut b = Builder::default();
    put(&mut b, OpType::Ok, 1, &[]);
    put(&mut b, OpType::Ok, 2, &[1]);
    b.read(10, 0, true, registers(0, &[1]));
    assert_eq!(checkers(&b.findings()), vec!["register"]);
}

#[test]
fn register_concurrent_values_and_indeterminate_overwrites_are_allowed() {
    let mut b = Builder::default();
    put(&mut b, OpType::Ok, 1, &[]);
    put(&mut b, OpType::Ok, 2, &[]);
    put(&mut b, OpType::Info, 3, &[1]);
    b.read(10, 0, true, registers(0, &[1, 2]));
    assert!(b.findings().is_empty());
}

#[test]
fn register_a_value_nobody_wrote_is_flagged() {
    let mut b = Builder::default();
    put(&mut b, OpType::Fail, 4, &[]);
    b.read(10, 0, false, registers(0, &[4]));
    assert_eq!(checkers(&b.findings()), vec!["register"]);
}

// ----- text ----------------------------------------------------------------

fn text(content: &str) -> ReadValue {
    ReadValue {
        text: content.to_owned(),
        ..ReadValue::default()
    }
}

fn edit(b: &mut Builder, f: Function, outcome: OpType, ch: char) {
    b.write(
        0,
        5,
        outcome,
        f,
        Value::Char {
            doc: 0,
            ch: Some(ch),
        },
    );
}

#[test]
fn text_lost_resurrected_duplicated_and_foreign_characters_are_flagged() {
    let mut b = Builder::default();
    edit(&mut b, Function::Insert, OpType::Ok, 'a');
    edit(&mut b, Function::Insert, OpType::Ok, 'b');
    edit(&mut b, Function::Delete, OpType::Ok, 'b');
    edit(&mut b, Function::Insert, OpType::Ok, 'c');
    b.read(10, 0, true, text("bcc!"));
    let messages: Vec<String> = b.findings().into_iter().map(|f| f.message).collect();
    let all = messages.join("\n");
    assert!(all.contains("twice"), "{all}");
    assert!(all.contains("never inserted"), "{all}");
    assert!(all.contains("ends without"), "{all}");
    assert!(all.contains("delete removed"), "{all}");
}

#[test]
fn text_an_indeterminate_delete_may_or_may_not_have_happened() {
    for content in ["a", ""] {
        let mut b = Builder::default();
        edit(&mut b, Function::Insert, OpType::Ok, 'a');
        edit(&mut b, Function::Delete, OpType::Info, 'a');
        b.read(10, 0, true, text(content));
        assert!(b.findings().is_empty(), "{content:?}");
    }
}

// ----- dependencies ----------------------------------------------------------

#[test]
fn deps_b_without_its_a_is_flagged_anywhere() {
    let mut b = Builder::default();
    b.write(
        0,
        5,
        OpType::Ok,
        Function::WriteA,
        Value::Pair {
            doc: 0,
            id: Some(1),
        },
    );
    b.write(
        6,
        9,
        OpType::Ok,
        Function::WriteB,
        Value::Pair {
            doc: 0,
            id: Some(1),
        },
    );
    let orphan = ReadValue {
        deps_b: vec![1],
        ..ReadValue::default()
    };
    b.read(7, 2, false, orphan);
    let whole = ReadValue {
        deps_a: vec![1],
        deps_b: vec![1],
        ..ReadValue::default()
    };
    b.read(20, 2, true, whole);
    let findings = b.findings();
    assert_eq!(checkers(&findings), vec!["deps"], "{findings:?}");
    assert!(findings[0].message.contains("b without its a"));
}

#[test]
fn deps_a_change_shown_without_its_dependencies_is_flagged() {
    let mut b = Builder::default();
    let broken = ReadValue {
        changes_missing_deps: 2,
        ..ReadValue::default()
    };
    b.read(0, 0, false, broken);
    assert_eq!(checkers(&b.findings()), vec!["deps"]);
}

#[test]
fn an_empty_history_is_valid() {
    assert!(check(&History::default(), Vec::new()).valid);
}
