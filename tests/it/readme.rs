//! Every Rust example of the README and of the manual (`src/guide/`), run
//! against a real database: the build script writes each ```` ```rust ```` block to a file of its own, and each
//! module here includes one, with a test that calls it as a reader of the
//! README would.

use diesel::prelude::*;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{create_task, StepTemplate, TaskRequest, TaskTemplate};
use tasker_diesel::StepState;

/// A module with README example `$index` and a test, inside the module so
/// that it can call the example's private functions.
macro_rules! readme_example {
    ($module:ident, $index:literal, $test:item) => {
        #[allow(dead_code, unused_imports)]
        mod $module {
            use super::*;

            include!(concat!(env!("OUT_DIR"), "/readme_", $index, ".rs"));

            $test
        }
    };
}

/// One test per example: a block added to the README fails here until it has one.
#[test]
fn every_readme_example_has_a_test() {
    assert_eq!(env!("TASKER_README_SNIPPETS"), "8");
}

fn order_template() -> TaskTemplate {
    TaskTemplate::new("shop", "process_order", "1.0.0")
        .step(StepTemplate::new("validate"))
        .step(StepTemplate::new("charge_card").depends_on(["validate"]))
}

fn in_process_steps(conn: &mut PgConnection) -> i64 {
    tasker_diesel::schema::tasker_workflow_steps::table
        .filter(tasker_diesel::schema::tasker_workflow_steps::in_process.eq(true))
        .count()
        .get_result(conn)
        .unwrap()
}

readme_example!(
    connecting,
    "0",
    #[test]
    fn readme_connecting() {
        let db = TestDatabase::new();
        assert_eq!(connect(db.url()).unwrap().name, "payments");
    }
);

readme_example!(
    reading,
    "1",
    #[test]
    fn readme_reading() {
        let db = TestDatabase::new();
        let mut conn = db.connection();
        let task = create_task(&mut conn, &TaskRequest::new(&order_template())).unwrap();
        next_moves(&mut conn, task.task.task_id).unwrap();
        next_moves(&mut conn, -1).unwrap();
    }
);

readme_example!(
    maintenance,
    "2",
    #[test]
    fn readme_maintenance() {
        let db = TestDatabase::new();
        let mut conn = db.connection();
        create_task(&mut conn, &TaskRequest::new(&order_template())).unwrap();
        check(&mut conn).unwrap();
    }
);

readme_example!(
    running,
    "3",
    #[test]
    fn readme_running_workflows() {
        let db = TestDatabase::new();
        let mut conn = db.connection();
        run(&mut conn).unwrap();
        // validate completed, charge_card failed and waits for its retry.
        let states: Vec<StepState> = tasker_diesel::StepReadinessStatus::for_tasks(&[1])
            .load(&mut conn)
            .unwrap()
            .into_iter()
            .map(|step| step.current_state)
            .collect();
        assert_eq!(
            states,
            [StepState::Complete, StepState::Pending, StepState::Pending]
        );
    }
);

readme_example!(
    worker_runtime,
    "4",
    #[test]
    fn readme_worker_runtime() {
        let db = TestDatabase::new();
        serve(db.pool()).unwrap();
    }
);

readme_example!(
    dispatching,
    "5",
    #[test]
    fn readme_dispatching_runs_every_step_then_returns() {
        let db = TestDatabase::new();
        let mut conn = db.connection();
        let task = create_task(
            &mut conn,
            &TaskRequest::new(&order_template()).context(json!({"order": 7})),
        )
        .unwrap();
        worker(&mut conn, Duration::from_millis(300)).unwrap();
        let states: Vec<StepState> =
            tasker_diesel::StepReadinessStatus::for_task(task.task.task_id)
                .load(&mut conn)
                .unwrap()
                .into_iter()
                .map(|step| step.current_state)
                .collect();
        assert_eq!(states, [StepState::Complete, StepState::Complete]);
    }
);

readme_example!(
    scaling_out,
    "6",
    #[test]
    fn readme_scaling_out_claims_on_the_primary() {
        let db = TestDatabase::new();
        // The primary stands in for a standby too: it is not one, so every
        // read falls back to the primary, as the example says.
        serve(db.url(), &[db.url()], &order_template()).unwrap();
        assert_eq!(
            in_process_steps(&mut db.connection()),
            1,
            "the ready root step is claimed"
        );
    }
);

readme_example!(
    adopting,
    "7",
    #[test]
    fn readme_adopting_a_rails_database() {
        let db = TestDatabase::try_rails_engine().unwrap();
        tasker_diesel::testing::fill_rails_engine_database(&mut db.connection(), 10).unwrap();
        adopt(db.url()).unwrap();
        let mut conn = db.connection();
        assert_eq!(
            tasker_diesel::adoption::tasks_to_backfill(&mut conn).unwrap(),
            0,
            "adopted and backfilled"
        );
        assert_eq!(
            tasker_diesel::readiness::ReadinessDrift::load(&mut conn, None).unwrap(),
            []
        );
    }
);
