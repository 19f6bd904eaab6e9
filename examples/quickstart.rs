//! Migrates a database to the Tasker schema and prints what it holds.
//!
//! ```sh
//! cargo run --example quickstart                       # a throwaway PostgreSQL cluster
//! DATABASE_URL=postgres://... cargo run --example quickstart   # an existing database
//! ```

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use tasker_diesel::migrations::schema_version;
use tasker_diesel::testing::LocalCluster;
use tasker_diesel::{establish_connection, run_pending_migrations};

/// Rows in each table of the schema.
const TABLE_COUNTS: &str = "
    SELECT 'tasker_task_namespaces' AS table_name, count(*) AS row_count FROM tasker_task_namespaces
    UNION ALL SELECT 'tasker_dependent_systems', count(*) FROM tasker_dependent_systems
    UNION ALL SELECT 'tasker_named_tasks', count(*) FROM tasker_named_tasks
    UNION ALL SELECT 'tasker_named_steps', count(*) FROM tasker_named_steps
    UNION ALL SELECT 'tasker_named_tasks_named_steps', count(*) FROM tasker_named_tasks_named_steps
    UNION ALL SELECT 'tasker_dependent_system_object_maps', count(*) FROM tasker_dependent_system_object_maps
    UNION ALL SELECT 'tasker_annotation_types', count(*) FROM tasker_annotation_types
    UNION ALL SELECT 'tasker_tasks', count(*) FROM tasker_tasks
    UNION ALL SELECT 'tasker_task_annotations', count(*) FROM tasker_task_annotations
    UNION ALL SELECT 'tasker_task_transitions', count(*) FROM tasker_task_transitions
    UNION ALL SELECT 'tasker_workflow_steps', count(*) FROM tasker_workflow_steps
    UNION ALL SELECT 'tasker_workflow_step_edges', count(*) FROM tasker_workflow_step_edges
    UNION ALL SELECT 'tasker_workflow_step_transitions', count(*) FROM tasker_workflow_step_transitions";

#[derive(QueryableByName)]
struct TableCount {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = BigInt)]
    row_count: i64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Kept alive until the end of main: dropping it stops the cluster.
    let mut cluster = None;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            println!("DATABASE_URL is unset: starting a throwaway PostgreSQL cluster");
            cluster.insert(LocalCluster::start()?).url().to_owned()
        }
    };
    let mut conn = establish_connection(&url)?;

    let applied = run_pending_migrations(&mut conn)?;
    println!(
        "applied {} migration(s): {}",
        applied.len(),
        applied.join(", ")
    );
    let version = schema_version(&mut conn)?.unwrap_or_else(|| "none".to_owned());
    println!("schema version: {version}\n");

    println!("{:<40} {:>10}", "table", "rows");
    for row in diesel::sql_query(TABLE_COUNTS).load::<TableCount>(&mut conn)? {
        println!("{:<40} {:>10}", row.table_name, row.row_count);
    }
    drop(cluster);
    Ok(())
}
