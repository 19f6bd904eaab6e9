//! The database accepts exactly the edges that keep each task's steps a DAG,
//! over many random graphs, compared with a plain Rust reachability check.

use std::collections::BTreeSet;

use diesel::prelude::*;
use proptest::prelude::*;
use tasker_diesel::models::NewWorkflowStepEdge;
use tasker_diesel::schema::tasker_workflow_step_edges;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{Error, IntegrityRule};

use crate::support;

const MAX_STEPS: usize = 7;

/// What the schema should say about adding `edge` to `edges` (indexes of steps).
fn expected(
    edges: &BTreeSet<(usize, usize)>,
    (from, to): (usize, usize),
) -> Result<(), IntegrityRule> {
    if from == to {
        return Err(IntegrityRule::SelfEdge);
    }
    if edges.contains(&(from, to)) {
        return Err(IntegrityRule::DuplicateEdge);
    }
    if reaches(edges, to, from) {
        return Err(IntegrityRule::Cycle);
    }
    Ok(())
}

/// Whether `target` can be reached from `start` along `edges`.
fn reaches(edges: &BTreeSet<(usize, usize)>, start: usize, target: usize) -> bool {
    let mut seen = BTreeSet::from([start]);
    let mut frontier = vec![start];
    while let Some(step) = frontier.pop() {
        if step == target {
            return true;
        }
        for &(_, child) in edges.range((step, 0)..=(step, usize::MAX)) {
            if seen.insert(child) {
                frontier.push(child);
            }
        }
    }
    false
}

fn is_acyclic(edges: &BTreeSet<(usize, usize)>) -> bool {
    edges
        .iter()
        .all(|&(from, to)| from != to && !reaches(edges, to, from))
}

fn outcome(result: QueryResult<usize>) -> Result<(), IntegrityRule> {
    match result.map_err(Error::from) {
        Ok(_) => Ok(()),
        Err(Error::Integrity { rule, .. }) => Err(rule),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

fn insert(
    conn: &mut PgConnection,
    step_ids: &[i64],
    edges: &[(usize, usize)],
) -> QueryResult<usize> {
    let rows: Vec<NewWorkflowStepEdge> = edges
        .iter()
        .map(|&(from, to)| NewWorkflowStepEdge {
            from_step_id: step_ids[from],
            to_step_id: step_ids[to],
            name: "provides",
        })
        .collect();
    diesel::insert_into(tasker_workflow_step_edges::table)
        .values(&rows)
        .execute(conn)
}

fn edge_list() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0..MAX_STEPS, 0..MAX_STEPS), 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Edges added one at a time: each is accepted or rejected exactly as the
    /// reference says, for the reason it says.
    #[test]
    fn edges_added_one_by_one_are_accepted_exactly_when_the_graph_stays_a_dag(candidates in edge_list()) {
        let db = TestDatabase::new();
        let mut conn = db.connection();
        let step_ids: Vec<i64> = support::task_with_steps(&mut conn, MAX_STEPS)
            .steps.iter().map(|step| step.workflow_step_id).collect();
        let mut accepted = BTreeSet::new();
        for edge in candidates {
            let want = expected(&accepted, edge);
            prop_assert_eq!(outcome(insert(&mut conn, &step_ids, &[edge])), want, "edge {:?} after {:?}", edge, accepted);
            if want.is_ok() {
                accepted.insert(edge);
            }
        }
        let stored: i64 = tasker_workflow_step_edges::table.count().get_result(&mut conn).unwrap();
        prop_assert_eq!(stored as usize, accepted.len());
    }

    /// Edges written by one statement are accepted together exactly when
    /// the whole graph stays a DAG, and otherwise none is written.
    #[test]
    fn edges_written_together_are_accepted_exactly_when_the_graph_stays_a_dag(
        first in edge_list(),
        second in edge_list(),
    ) {
        let db = TestDatabase::new();
        let mut conn = db.connection();
        let step_ids: Vec<i64> = support::task_with_steps(&mut conn, MAX_STEPS)
            .steps.iter().map(|step| step.workflow_step_id).collect();
        // A DAG to start from: the first list with the edges that break it left out.
        let mut existing = BTreeSet::new();
        for edge in first {
            if expected(&existing, edge).is_ok() {
                existing.insert(edge);
            }
        }
        let existing_list: Vec<_> = existing.iter().copied().collect();
        prop_assert_eq!(outcome(insert(&mut conn, &step_ids, &existing_list)), Ok(()));

        let batch: Vec<_> = second.into_iter().filter(|(from, to)| from != to).collect::<BTreeSet<_>>()
            .into_iter().filter(|edge| !existing.contains(edge)).collect();
        let mut combined = existing.clone();
        combined.extend(batch.iter().copied());
        let want = if is_acyclic(&combined) { Ok(()) } else { Err(IntegrityRule::Cycle) };
        prop_assert_eq!(outcome(insert(&mut conn, &step_ids, &batch)), want, "batch {:?} onto {:?}", batch, existing);

        let stored: i64 = tasker_workflow_step_edges::table.count().get_result(&mut conn).unwrap();
        let expected_count = if want.is_ok() { combined.len() } else { existing.len() };
        prop_assert_eq!(stored as usize, expected_count);
    }
}
