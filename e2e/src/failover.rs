//! Measuring a Redis failover from the clients' side, shared by the Sentinel and the Redis
//! Cluster tests (`e2e/tests/redis_ha.rs`, `e2e/tests/redis_cluster.rs`): a publisher sends a
//! numbered message to a room every period; each receiver's log says what arrived, when, and
//! whether anything came twice or out of order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::sio::{Client, now_ms};

/// What one receiver got of the publisher's messages.
pub struct Receipt {
    pub name: String,
    /// seq -> receive time (ms, [`now_ms`] base), first copy only.
    pub got: BTreeMap<u64, f64>,
    pub duplicates: usize,
    pub out_of_order: usize,
    /// The seq numbers that arrived after a higher one.
    pub late: Vec<u64>,
}

/// The `seq` events `c` received so far.
pub fn receipt(c: &Client, name: &str) -> Receipt {
    let mut got = BTreeMap::new();
    let (mut duplicates, mut out_of_order, mut last) = (0, 0, None);
    let mut late = Vec::new();
    for r in c.events("seq") {
        let k = r.data().as_u64().expect("seq numbers");
        if got.insert(k, r.t_ms).is_some() {
            duplicates += 1;
        }
        if last.is_some_and(|l| k < l) {
            out_of_order += 1;
            late.push(k);
        }
        last = Some(k);
    }
    Receipt {
        name: name.into(),
        got,
        duplicates,
        out_of_order,
        late,
    }
}

/// One failover's numbers for one receiver.
pub struct Outcome {
    /// From the kill until the first message published after the kill arrived.
    pub gap_ms: f64,
    /// Messages published from the kill on that never arrived.
    pub lost: usize,
    /// Of those, published after delivery had resumed (should be none).
    pub lost_after_resume: usize,
    /// Their send times, in ms after the kill.
    pub lost_after_resume_at: Vec<f64>,
}

/// `sent` is seq -> send time; only messages sent at or after `from_ms` count (pure).
pub fn outcome(r: &Receipt, sent: &BTreeMap<u64, f64>, kill_ms: f64, from_ms: f64) -> Outcome {
    let resumed = sent
        .iter()
        .filter(|(_, t)| **t > kill_ms)
        .filter_map(|(k, _)| r.got.get(k))
        .fold(f64::INFINITY, |a, b| a.min(*b));
    let counted = sent.iter().filter(|(_, t)| **t >= from_ms);
    let lost: Vec<f64> = counted
        .filter(|(k, _)| !r.got.contains_key(k))
        .map(|(_, t)| *t)
        .collect();
    let after: Vec<f64> = lost
        .iter()
        .filter(|t| **t > resumed)
        .map(|t| t - kill_ms)
        .collect();
    Outcome {
        gap_ms: resumed - kill_ms,
        lost: lost.len(),
        lost_after_resume: after.len(),
        lost_after_resume_at: after,
    }
}

/// How long before a kill a message may have been sent and still be on its way (client ->
/// node -> Redis) when the kill lands. Such a message belongs to that kill's outage: counted
/// with the previous failover's steady state it looked like a loss after delivery had resumed
/// (a CI failure of the Sentinel test, one message sent just before the second kill).
pub const IN_FLIGHT_MS: f64 = 250.0;

/// The messages (seq -> send time) that count for failover `i` of `kills_ms`: sent from
/// [`IN_FLIGHT_MS`] before its kill until [`IN_FLIGHT_MS`] before the next kill (pure).
pub fn failover_window(
    sent: &BTreeMap<u64, f64>,
    kills_ms: &[f64],
    i: usize,
) -> BTreeMap<u64, f64> {
    let from = kills_ms[i] - IN_FLIGHT_MS;
    let until = kills_ms
        .get(i + 1)
        .map(|k| k - IN_FLIGHT_MS)
        .unwrap_or(f64::INFINITY);
    sent.iter()
        .filter(|(_, t)| **t >= from && **t < until)
        .map(|(k, t)| (*k, *t))
        .collect()
}

/// One kill as a failover test saw it.
pub struct Failover {
    /// When the kill landed ([`now_ms`] base).
    pub kill_ms: f64,
    /// What happened, for the MEASURE lines ("primary killed, replica on 7001 promoted after 2s").
    pub what: String,
}

/// The verdict of a failover test, shared by the Sentinel and the Redis Cluster tests:
/// no receiver got a duplicate or a message out of order, the publisher's own node
/// (`receipts[0]`) lost nothing, the others lost nothing before the first kill, and for every
/// failover and every other receiver nothing was lost after delivery resumed and the gap
/// stayed within `goal`. Prints one MEASURE line per
/// failover and receiver; `logs` is appended to a failure's message.
pub fn check_failovers(
    label: &str,
    sent: &BTreeMap<u64, f64>,
    receipts: &[Receipt],
    failovers: &[Failover],
    every: Duration,
    goal: Duration,
    logs: impl Fn() -> String,
) {
    println!(
        "published {} messages, one every {every:?}, through {} failovers",
        sent.len(),
        failovers.len()
    );
    for r in receipts {
        assert_eq!(r.duplicates, 0, "{} got duplicates", r.name);
        assert_eq!(
            r.out_of_order, 0,
            "{} got messages out of order: {:?}",
            r.name, r.late
        );
    }
    let local_lost = sent.len() - receipts[0].got.len();
    assert_eq!(
        local_lost, 0,
        "the publisher's node ({}) lost local messages",
        receipts[0].name
    );
    let kills: Vec<f64> = failovers.iter().map(|f| f.kill_ms).collect();
    // Before the first kill (less what may be in flight into it) every receiver got everything.
    let steady_until = kills.first().map_or(f64::INFINITY, |k| k - IN_FLIGHT_MS);
    for r in &receipts[1..] {
        let lost: Vec<u64> = sent
            .iter()
            .filter(|(k, t)| **t < steady_until && !r.got.contains_key(k))
            .map(|(k, _)| *k)
            .collect();
        assert!(
            lost.is_empty(),
            "{}: lost before any failover: {lost:?}{}",
            r.name,
            logs()
        );
    }
    for (i, f) in failovers.iter().enumerate() {
        let round = i + 1;
        // From this kill until the next one (or the end), each message with the outage it
        // was in flight into.
        let window = failover_window(sent, &kills, i);
        for r in &receipts[1..] {
            let o = outcome(r, &window, f.kill_ms, f.kill_ms - IN_FLIGHT_MS);
            println!(
                "MEASURE {label} failover #{round}: {}; {}: cross-node delivery back {:.0} ms \
                 after the kill, {} messages lost ({} published every {every:?} from the kill to \
                 the next event)",
                f.what,
                r.name,
                o.gap_ms,
                o.lost,
                window.iter().filter(|(_, t)| **t >= f.kill_ms).count(),
            );
            assert_eq!(
                o.lost_after_resume,
                0,
                "{}: messages lost after delivery resumed (failover #{round}), sent at these ms \
                 after the kill: {:?}{}",
                r.name,
                o.lost_after_resume_at,
                logs()
            );
            assert!(
                o.gap_ms <= goal.as_millis() as f64,
                "{}: cross-node delivery came back {:.0} ms after the kill (failover #{round}), \
                 the goal is {goal:?}",
                r.name,
                o.gap_ms
            );
        }
    }
}

/// Whether `c` received a `seq` published after `kill_ms`.
pub fn heard_after(c: &Client, sent: &RefCell<BTreeMap<u64, f64>>, kill_ms: f64) -> bool {
    let sent = sent.borrow();
    c.events("seq").iter().rev().any(|r| {
        r.data()
            .as_u64()
            .and_then(|k| sent.get(&k))
            .is_some_and(|t| *t > kill_ms)
    })
}

/// Publishes `{room, event: seq, data: k}` from `from` every `every` until `stop` says so,
/// recording each seq's send time.
pub async fn publish_steadily(
    from: &Client,
    room: &str,
    every: Duration,
    sent: &RefCell<BTreeMap<u64, f64>>,
    stop: &RefCell<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0u64;
    while !*stop.borrow() {
        tick.tick().await;
        let t = now_ms();
        from.emit("publish", json!({"room": room, "event": "seq", "data": k}))
            .await
            .expect("the publisher's socket stays up");
        sent.borrow_mut().insert(k, t);
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt_of(got: BTreeMap<u64, f64>) -> Receipt {
        Receipt {
            name: "r".into(),
            got,
            duplicates: 0,
            out_of_order: 0,
            late: Vec::new(),
        }
    }

    #[test]
    fn the_gap_and_the_losses_count_from_the_kill() {
        // sent every 10 ms from t=0, the kill at 25: 30, 40 and 50 are lost, 60 on arrive
        let sent: BTreeMap<u64, f64> = (0..10).map(|k| (k, k as f64 * 10.0)).collect();
        let got: BTreeMap<u64, f64> = (0..10)
            .filter(|k| !(3..=5).contains(k))
            .map(|k| (k, k as f64 * 10.0 + 1.0))
            .collect();
        let r = receipt_of(got);
        let o = outcome(&r, &sent, 25.0, 25.0);
        assert_eq!(o.gap_ms, 61.0 - 25.0);
        assert_eq!(o.lost, 3);
        assert_eq!(o.lost_after_resume, 0);
        // a message lost after delivery resumed is told apart
        let mut r2 = r;
        r2.got.remove(&8);
        let o = outcome(&r2, &sent, 25.0, 25.0);
        assert_eq!((o.lost, o.lost_after_resume), (4, 1));
        assert_eq!(o.lost_after_resume_at, [80.0 - 25.0]);
        // nothing after the kill ever arrived: the gap is infinite (fails any bound)
        let none = receipt_of(BTreeMap::new());
        assert!(outcome(&none, &sent, 25.0, 25.0).gap_ms.is_infinite());
    }

    #[test]
    #[should_panic(expected = "lost before any failover: [3]")]
    fn a_loss_before_the_first_kill_fails_the_check() {
        let sent: BTreeMap<u64, f64> = (0..50).map(|k| (k, k as f64 * 100.0)).collect();
        let all: BTreeMap<u64, f64> = sent.iter().map(|(k, t)| (*k, t + 5.0)).collect();
        let mut r = receipt_of(all.clone());
        r.name = "n2".into();
        r.got.remove(&3);
        let kill = Failover {
            kill_ms: 3000.0,
            what: "test".into(),
        };
        check_failovers(
            "test",
            &sent,
            &[receipt_of(all), r],
            &[kill],
            Duration::from_millis(100),
            Duration::from_secs(5),
            String::new,
        );
    }

    #[test]
    fn a_message_sent_just_before_a_kill_belongs_to_that_kill() {
        let sent: BTreeMap<u64, f64> = (0..100).map(|k| (k, k as f64 * 100.0)).collect();
        let kills = [1000.0, 5000.0];
        let first = failover_window(&sent, &kills, 0);
        let second = failover_window(&sent, &kills, 1);
        // 4800 is in flight when the second kill lands: the second failover's, not the first's
        assert_eq!(first.keys().next(), Some(&8));
        assert_eq!(first.keys().last(), Some(&47));
        assert_eq!(second.keys().next(), Some(&48));
        assert_eq!(second.keys().last(), Some(&99));
        // lost just before the kill: counted as lost, never as lost after the resume
        let got = (0..100)
            .filter(|k| *k != 48)
            .map(|k| (k, k as f64 * 100.0 + 5.0));
        let o = outcome(
            &receipt_of(got.collect()),
            &second,
            5000.0,
            5000.0 - IN_FLIGHT_MS,
        );
        assert_eq!((o.lost, o.lost_after_resume), (1, 0));
    }
}
