//! Migrations, the ledger's idempotency and atomic commits, pruning.

use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_migrations::MigrationHarness;

use super::conn::WAL_RESTART_FRAMES;
use super::schema::*;
use super::*;

#[test]
fn migrations_up_down_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = connect(&dir.path().join("m.db")).unwrap();
    run_migrations(&mut conn).unwrap();
    assert!(list_models(&mut conn).unwrap().is_empty());
    conn.revert_all_migrations(MIGRATIONS).unwrap();
    // Every table is gone after the down migrations.
    let left: i64 = diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations'",
    )
    .get_result::<Count>(&mut conn)
    .unwrap()
    .n;
    assert_eq!(left, 0);
    run_migrations(&mut conn).unwrap();
    assert!(list_trainers(&mut conn).unwrap().is_empty());
}

/// One object of the schema as SQLite records it.
#[derive(QueryableByName, Debug, PartialEq)]
struct SchemaObject {
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    sql: Option<String>,
}

fn schema(conn: &mut SqliteConnection) -> Vec<SchemaObject> {
    diesel::sql_query(
        "SELECT type AS kind, name, sql FROM sqlite_master \
         WHERE name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations' \
         ORDER BY type, name",
    )
    .load(conn)
    .unwrap()
}

/// Each migration's down undoes exactly its up: the schema after the
/// down is the schema before the up, and up again gives the same schema.
#[test]
fn each_migration_down_restores_the_schema_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = connect(&dir.path().join("s.db")).unwrap();
    let migrations = conn.pending_migrations(MIGRATIONS).unwrap();
    assert!(migrations.len() >= 4);
    for m in &migrations {
        let before = schema(&mut conn);
        conn.run_migration(m.as_ref()).unwrap();
        let after = schema(&mut conn);
        assert_ne!(before, after, "{} changes nothing", m.name());
        conn.revert_migration(m.as_ref()).unwrap();
        assert_eq!(schema(&mut conn), before, "{} down", m.name());
        conn.run_migration(m.as_ref()).unwrap();
        assert_eq!(schema(&mut conn), after, "{} up again", m.name());
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[test]
fn ledger_idempotency_and_atomic_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = connect(&dir.path().join("l.db")).unwrap();
    run_migrations(&mut conn).unwrap();
    let m = ModelRow {
        name: "m".into(),
        architecture: "custom".into(),
        layout: "{}".into(),
        settings: None,
        created_at: now(),
        normalisation: None,
        evalset: None,
    };
    let v0 = NewVersion {
        model: "m",
        version: 0,
        parent: None,
        num_updates: 0,
        weights: b"w",
        metrics: "{}".into(),
        created_at: now(),
        weights_file: None,
    };
    insert_model(&mut conn, &m, &v0).unwrap();
    let u = NewUpdate {
        update_id: "u1",
        trainer: "t",
        model: "m",
        base_version: 0,
        num_examples: 3,
        staleness: 0,
        loss: None,
        bytes: 1,
        status: "pending",
        refusal_code: None,
        refusal_message: None,
        received_at: now(),
        payload: Some(b"d"),
        payload_file: None,
    };
    let InsertOutcome::Inserted { row_id } = insert_update(&mut conn, &u).unwrap() else {
        panic!("first insert must insert")
    };
    assert!(matches!(
        insert_update(&mut conn, &u).unwrap(),
        InsertOutcome::Duplicate { .. }
    ));
    // A batch with a duplicate of an earlier row and one within itself:
    // the others are still inserted, each duplicate is reported as such.
    let u2 = NewUpdate {
        update_id: "u2",
        ..u.clone()
    };
    let out = insert_updates(&mut conn, &[u2.clone(), u.clone(), u2.clone()]).unwrap();
    let kinds: Vec<&str> = out
        .iter()
        .map(|r| match r {
            Ok(InsertOutcome::Inserted { .. }) => "inserted",
            Ok(InsertOutcome::Duplicate { .. }) => "duplicate",
            Err(_) => "error",
        })
        .collect();
    assert_eq!(kinds, ["inserted", "duplicate", "duplicate"]);
    let Ok(InsertOutcome::Inserted { row_id: u2_id }) = out[0] else {
        panic!("u2 inserted")
    };
    let v1 = NewVersion {
        version: 1,
        parent: Some(0),
        ..v0.clone()
    };
    commit_version(&mut conn, &v1, &[row_id, u2_id], &[], &[]).unwrap();
    // Applying the same update again aborts the whole version.
    let v2 = NewVersion {
        version: 2,
        parent: Some(1),
        ..v0.clone()
    };
    assert!(commit_version(&mut conn, &v2, &[row_id], &[], &[]).is_err());
    assert_eq!(latest_version(&mut conn, "m").unwrap(), Some(1));
    let only_m = UpdateFilter {
        model: Some("m"),
        ..Default::default()
    };
    let rows = list_updates(&mut conn, &only_m, 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == "applied"));
    assert_eq!(rows[0].applied_in_version, Some(1));
    // Still a duplicate once applied (the index no longer follows the
    // status), and a refused id does not block accepting it later.
    match insert_update(&mut conn, &u).unwrap() {
        InsertOutcome::Duplicate { status, .. } => assert_eq!(status, "applied"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let refused = NewUpdate {
        update_id: "u3",
        status: "refused",
        refusal_code: Some("stale_update"),
        refusal_message: Some("too old"),
        payload: None,
        ..u.clone()
    };
    insert_refused(&mut conn, &refused).unwrap();
    insert_refused(&mut conn, &refused).unwrap();
    // A batch over several statements: every id names its own row.
    let ids: Vec<String> = (0..75).map(|i| format!("b{i}")).collect();
    let batch: Vec<NewUpdate<'_>> = ids
        .iter()
        .map(|id| NewUpdate {
            update_id: id,
            bytes: id.len() as i64,
            ..u.clone()
        })
        .collect();
    let out = insert_updates(&mut conn, &batch).unwrap();
    for (o, id) in out.iter().zip(&ids) {
        let Ok(InsertOutcome::Inserted { row_id }) = o else {
            panic!("{id} not inserted: {o:?}")
        };
        let stored: String = updates::table
            .find(row_id)
            .select(updates::update_id)
            .first(&mut conn)
            .unwrap();
        assert_eq!(&stored, id);
    }
    let u3 = NewUpdate {
        update_id: "u3",
        ..u.clone()
    };
    assert!(matches!(
        insert_update(&mut conn, &u3).unwrap(),
        InsertOutcome::Inserted { .. }
    ));
}

/// Under a writer that never pauses, the checkpoint thread alone never
/// reaches the WAL's end; with the writer's catch-up the WAL starts over.
#[test]
fn wal_starts_over_under_a_busy_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let mut conn = connect(&path).unwrap();
    conn.batch_execute("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x BLOB NOT NULL);")
        .unwrap();
    let due = start_checkpointer(&path).expect("checkpoint thread");
    let write = |conn: &mut SqliteConnection| {
        conn.immediate_transaction(|c| {
            diesel::sql_query("INSERT INTO t (x) VALUES (zeroblob(65536))")
                .execute(c)
                .map(|_| ())
        })
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !due.swap(false, Ordering::AcqRel) {
        assert!(std::time::Instant::now() < deadline, "no checkpoint pass");
        write(&mut conn);
    }
    let before = wal_checkpoint(&mut conn).unwrap();
    assert!(before >= WAL_RESTART_FRAMES, "{before} frames");
    // The next transaction starts the WAL over, unless the checkpoint
    // thread's own pass happens to hold it at that instant; then the
    // next one does.
    let restarted = (0..20).any(|_| {
        write(&mut conn);
        wal_checkpoint(&mut conn).unwrap() < before
    });
    assert!(restarted, "the WAL never started over from {before} frames");
}
