//! Whether the gates of every worker have settled.

use timely::dataflow::InputHandle;

/// Whether the gates of all workers (all processes) have settled: each
/// round, every worker sends whether its own have to every worker; a round
/// is settled once the frontier passes it, and it says yes when all `peers`
/// answers did. A worker's "settled" never turns back (no PDF comes after
/// the downloaded stream has ended), so every worker sees the same first
/// "yes" round and all stop reading IR together.
pub(crate) struct GateCensus {
    input: InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<bool>>>,
    round: u64,
    settled: std::rc::Rc<std::cell::Cell<bool>>,
}

impl GateCensus {
    pub fn new(worker: &mut timely::worker::Worker) -> GateCensus {
        use timely::dataflow::operators::vec::Broadcast;
        use timely::dataflow::operators::Operator;
        let peers = worker.peers();
        let mut input = InputHandle::new();
        let settled = std::rc::Rc::new(std::cell::Cell::new(false));
        let answer = settled.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let mut rounds: std::collections::BTreeMap<u64, (usize, bool)> = Default::default();
            input.to_stream(scope).broadcast().sink(
                timely::dataflow::channels::pact::Pipeline,
                "census",
                move |(answers, frontier)| {
                    answers.for_each_stamp(|cap, data| {
                        let round = cap.least().copied().unwrap_or_default();
                        let entry = rounds.entry(round).or_insert((0, true));
                        for batch in data {
                            for yes in batch.drain(..) {
                                entry.0 += 1;
                                entry.1 &= yes;
                            }
                        }
                    });
                    while let Some(entry) = rounds.first_entry() {
                        if frontier.frontier().less_equal(entry.key()) {
                            break;
                        }
                        let (count, yes) = entry.remove();
                        if count == peers && yes {
                            answer.set(true);
                        }
                    }
                },
            );
        });
        GateCensus { input, round: 0, settled }
    }

    /// Sends this worker's answer for the current round and opens the next.
    pub fn report(&mut self, settled: bool) {
        self.input.send(settled);
        self.round += 1;
        self.input.advance_to(self.round);
    }

    /// Some round found every worker settled.
    pub fn settled(&self) -> bool {
        self.settled.get()
    }
}
