//! The differential graph: over random sequences of upserts and deletes,
//! the incrementally maintained support and mention counts equal a
//! from-scratch build over the documents' final versions, and an epoch that
//! changes nothing emits nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use medkg_dataflow::kg::{graph, DocClaims, DocKey, Edge, Upsert};
use proptest::prelude::*;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Input;
use timely::dataflow::{InputHandle, ProbeHandle};

type Counts = BTreeMap<(String, String), isize>;
type Support = BTreeMap<(String, Edge), isize>;

/// Runs the epochs through the graph; returns each epoch's output updates
/// (support, mentions), and the state they add up to.
fn run(epochs: &[Vec<Upsert>]) -> (Vec<usize>, Support, Counts) {
    let epochs = epochs.to_vec();
    timely::execute_directly(move |worker| {
        let support_out = Rc::new(RefCell::new(Vec::new()));
        let mention_out = Rc::new(RefCell::new(Vec::new()));
        let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Upsert>>> = InputHandle::new();
        let probe = ProbeHandle::new();
        let (s, m) = (support_out.clone(), mention_out.clone());
        worker.dataflow::<u64, _, _>(|scope| {
            let views = graph(scope.input_from(&mut input));
            views.support.inspect(move |(x, t, d)| s.borrow_mut().push((x.clone(), *t, *d))).probe_with(&probe);
            views.mentions.inspect(move |(x, t, d)| m.borrow_mut().push((x.clone(), *t, *d))).probe_with(&probe);
        });
        let mut per_epoch = Vec::new();
        for (t, upserts) in epochs.iter().enumerate() {
            let t = t as u64;
            let before = support_out.borrow().len() + mention_out.borrow().len();
            for (key, claims, _) in upserts {
                input.send((key.clone(), claims.clone(), t));
            }
            input.advance_to(t + 1);
            while probe.less_than(&(t + 1)) {
                worker.step();
            }
            per_epoch.push(support_out.borrow().len() + mention_out.borrow().len() - before);
        }
        // The count collections hold `(key, count)` with weight 1: add them up.
        let mut support: BTreeMap<((String, Edge), isize), isize> = BTreeMap::new();
        for (x, _, d) in support_out.borrow().iter() {
            *support.entry(x.clone()).or_default() += d;
        }
        let mut mentions: BTreeMap<((String, String), isize), isize> = BTreeMap::new();
        for (x, _, d) in mention_out.borrow().iter() {
            *mentions.entry(x.clone()).or_default() += d;
        }
        (per_epoch, flatten(support), flatten(mentions))
    })
}

/// `(key, count)` updates added up: each live key once, with its count.
fn flatten<K: Ord>(m: BTreeMap<(K, isize), isize>) -> BTreeMap<K, isize> {
    m.into_iter()
        .filter(|(_, d)| *d != 0)
        .map(|((k, count), d)| {
            assert_eq!(d, 1, "a count appears once");
            (k, count)
        })
        .collect()
}

/// The same, from scratch: the documents' last versions, counted.
fn batch(epochs: &[Vec<Upsert>]) -> (Support, Counts) {
    let mut docs: BTreeMap<DocKey, DocClaims> = BTreeMap::new();
    for upserts in epochs {
        for (key, claims, _) in upserts {
            match claims {
                Some(c) => docs.insert(key.clone(), c.clone()),
                None => docs.remove(key),
            };
        }
    }
    let (mut support, mut mentions): (Support, Counts) = Default::default();
    for ((tenant, _), claims) in &docs {
        let mut edges = claims.edges.clone();
        edges.sort();
        edges.dedup();
        for edge in edges {
            *support.entry((tenant.clone(), edge)).or_default() += 1;
        }
        let mut concepts = claims.mentions.clone();
        concepts.sort();
        concepts.dedup();
        for concept in concepts {
            *mentions.entry((tenant.clone(), concept)).or_default() += 1;
        }
    }
    (support, mentions)
}

fn edge(s: u8, p: u8, o: u8) -> Edge {
    let predicates = ["biolink:treats", "biolink:causes"];
    Edge { subject: format!("X:{s}"), predicate: predicates[p as usize % 2].into(), object: format!("Y:{o}") }
}

fn upsert_strategy() -> impl Strategy<Value = Upsert> {
    let claims = (proptest::collection::vec((0..3u8, 0..2u8, 0..3u8), 0..4), proptest::collection::vec(0..4u8, 0..3))
        .prop_map(|(edges, mentions)| DocClaims {
            edges: edges.into_iter().map(|(s, p, o)| edge(s, p, o)).collect(),
            mentions: mentions.into_iter().map(|m| format!("C:{m}")).collect(),
        });
    (0..2u8, 0..4u8, proptest::option::weighted(0.75, claims))
        .prop_map(|(tenant, doc, claims)| ((format!("t{tenant}"), format!("d{doc}")), claims, 0))
}

/// One upsert a document an epoch (the caller keeps the last by position).
fn one_per_document(upserts: Vec<Upsert>) -> Vec<Upsert> {
    let mut last: BTreeMap<DocKey, Upsert> = BTreeMap::new();
    for u in upserts {
        last.insert(u.0.clone(), u);
    }
    last.into_values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn incremental_equals_batch(epochs in proptest::collection::vec(proptest::collection::vec(upsert_strategy(), 0..5), 1..8)) {
        let epochs: Vec<Vec<Upsert>> = epochs.into_iter().map(one_per_document).collect();
        let (_, support, mentions) = run(&epochs);
        let (expected_support, expected_mentions) = batch(&epochs);
        prop_assert_eq!(support, expected_support);
        prop_assert_eq!(mentions, expected_mentions);
    }
}

#[test]
fn upserts_retract_old_claims_deletes_retract_all_and_a_repeat_emits_nothing() {
    let key = |d: &str| ("t".to_string(), d.to_string());
    let claims = |edges: &[Edge]| Some(DocClaims { edges: edges.to_vec(), mentions: vec!["C:1".into()] });
    let epochs = vec![
        vec![(key("a"), claims(&[edge(1, 0, 1), edge(2, 0, 2)]), 0), (key("b"), claims(&[edge(1, 0, 1)]), 0)],
        // a changes: its (2 treats 2) goes, (1 treats 1) keeps b's support.
        vec![(key("a"), claims(&[edge(1, 0, 1)]), 0)],
        // The same version again: nothing changes, nothing is emitted.
        vec![(key("a"), claims(&[edge(1, 0, 1)]), 0)],
        // b is deleted (a tombstone).
        vec![(key("b"), None, 0)],
    ];
    let (per_epoch, support, mentions) = run(&epochs);
    assert_eq!(per_epoch[2], 0, "a repeated version emits nothing");
    assert_eq!(support, BTreeMap::from([(("t".to_string(), edge(1, 0, 1)), 1)]));
    assert_eq!(mentions, BTreeMap::from([(("t".to_string(), "C:1".to_string()), 1)]));
}
